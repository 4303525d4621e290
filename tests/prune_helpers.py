"""Helpers shared by test modules: tiny models of every family with non-trivial BatchNorm statistics, and the
command line run in the test's own process (bad-input checks without an interpreter start each).

Imported as a top-level module (pytest's `pythonpath = ["tests"]`), so that a `tests` package installed by
another distribution (Ultralytics 8.3 ships one) cannot shadow it.
"""

import contextlib
import io
from types import SimpleNamespace

import torch
from ultralytics.nn.tasks import DetectionModel

FAMILIES = ["yolov3-tiny.yaml", "yolov5n.yaml", "yolov5n-p6.yaml", "yolov6n.yaml", "yolov8n.yaml",
            "yolov8n-p2.yaml", "yolov8n-p6.yaml", "yolov8n-ghost.yaml", "yolov9t.yaml", "yolov10n.yaml",
            "yolo11n.yaml", "yolo12n.yaml", "yolo26n.yaml"]


def build(yaml: str) -> DetectionModel:
    torch.manual_seed(0)
    return randomise_bn(DetectionModel(yaml, nc=10, verbose=False))


def size_for(model, base: int = 96) -> int:
    """The smallest multiple of the model stride that is at least `base`."""
    stride = int(max(model.stride))
    return stride * -(-base // stride)


def randomise_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics so channel mistakes show in the outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def first_output(y):
    return y[0] if isinstance(y, (tuple, list)) else y


def cli_here(*args) -> SimpleNamespace:
    """returncode, stdout and stderr of `yoloprune ARGS`, run by the CLI's `main` in this process (a traceback
    raises instead of printing)."""
    from yoloprune.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's own errors
            code = e.code
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())
