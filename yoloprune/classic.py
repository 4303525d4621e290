"""Classic YOLOv5 (the ultralytics/yolov5 repository): finding its code, and the few places it differs.

Its checkpoints pickle `models.yolo.DetectionModel` and `models.common.*`, which are not in the
`ultralytics` package. They import from a user's clone of the repository (`--yolov5-repo DIR`, or
the clone already on `sys.path`) or from the `yolov5` package of the Python registry, whose folder
is put on `sys.path` as its own code does. No classic code lives in yoloprune. What differs from an
Ultralytics detector, and is handled here:
- the output: (batch, anchors, xywh + objectness + class probabilities), turned into Ultralytics'
  (batch, xywh + class scores, anchors) with score = objectness x class probability, the score
  the classic NMS thresholds, so the same NMS and pycocotools path scores both;
- Conv+BN fusion: the classic `fuse()` matches classes by identity, which fails when the package
  and the pickled checkpoint import the same file under two module names; fused here by attributes;
- Detect's cached anchor grids: emptied whenever a model is saved or changes memory layout (a filled
  5-D grid breaks the channels-last move that Ultralytics' trainer and loader make);
- old checkpoints: the compatibility fix-ups the classic `attempt_load` applies;
- ONNX export: torch.onnx with the classic exporter's settings and metadata (`stride`, `names`); its
  output (batch, N, 5 + nc) is read back the same way;
- the checkpoint: the classic layout (`model`, `ema`, `epoch`, `opt`, ...), which the classic tools
  (`attempt_load`, `DetectMultiBackend`, `torch.hub.load(..., 'custom', path)`) read.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from yoloprune.errors import UserError

CLASSIC_MODULES = ("models", "utils", "yolov5")  # the top-level packages classic checkpoints pickle
INSTALL = "pip install --no-deps yolov5 && pip install 'yoloprune[yolov5]'"
HOW_TO_GET_IT = f"install its code ({INSTALL}) or pass --yolov5-repo DIR, a clone of ultralytics/yolov5"
OTHER_TASKS = {"SegmentationModel": "segmentation", "ClassificationModel": "classification"}


def use_repo(repo: str | Path) -> None:
    """Put a clone of ultralytics/yolov5 first on `sys.path` (exit 2 if `repo` is not one)."""
    path = Path(repo).expanduser().resolve()
    if not _is_clone(path):
        raise UserError(f"--yolov5-repo {repo}: no YOLOv5 models/yolo.py, models/common.py and utils/ there (give a "
                        "clone of ultralytics/yolov5)")
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (str(path), os.environ.get("PYTHONPATH"))))  # workers


def make_importable() -> bool:
    """Whether `models.yolo` can be imported now: a clone on `sys.path`, or the `yolov5` package (its folder is
    then appended to `sys.path`, as the package's own models/yolo.py does)."""
    if _clone_on_path():
        return True
    spec = importlib.util.find_spec("yolov5")
    if spec is None or spec.origin is None:
        return False
    folder = str(Path(spec.origin).parent)
    if folder not in sys.path:
        sys.path.append(folder)
    return True


def _clone_on_path() -> bool:
    return any(_is_clone(Path(p or ".")) for p in sys.path)


def _is_clone(path: Path) -> bool:
    """A folder laid out like the ultralytics/yolov5 repository (its C3 block marks YOLOv5 among the forks)."""
    common = path / "models" / "common.py"
    try:
        return (path / "models" / "yolo.py").is_file() and (path / "utils").is_dir() and \
            "class C3(" in common.read_text(errors="ignore")
    except OSError:
        return False


def is_classic(model: nn.Module) -> bool:
    """A model of the classic repository (its classes live in `models.*` or `yolov5.models.*`)."""
    module = type(model).__module__
    return module.split(".")[0] in ("models", "yolov5")


def check_detector(model: nn.Module, path: Path) -> None:
    """Exit 2 for a classic checkpoint that is not a detector."""
    task = OTHER_TASKS.get(type(model).__name__)
    if task:
        raise UserError(f"{path} is a classic YOLOv5 {task} checkpoint; yoloprune prunes detectors")
    head = model.model[-1] if hasattr(model, "model") else None
    if type(head).__name__ != "Detect" or not hasattr(head, "anchors"):
        raise UserError(f"{path} pickles models.yolo but is no YOLOv5 detector (its head is "
                        f"{type(head).__name__}): yoloprune reads YOLOv5 and Ultralytics detectors")


def refuse(model: nn.Module, flags: list[str]) -> None:
    """Exit 2 when a classic model meets options that train it with Ultralytics' own loss or distillation."""
    if flags and is_classic(model):
        raise UserError(f"{', '.join(flags)}: not supported for classic YOLOv5 models yet (it trains with Ultralytics' "
                        "own loss or distillation); fine-tune them with --finetune-epochs, --stages or `finetune`")


def prepare(model: nn.Module) -> nn.Module:
    """A loaded classic detector ready for use: names as a dict, the classic `attempt_load`'s fix-ups for
    checkpoints of older releases and torch versions, and empty anchor grids."""
    names = getattr(model, "names", None) or [str(i) for i in range(model.model[-1].nc)]
    model.names = names if isinstance(names, dict) else dict(enumerate(names))
    if not hasattr(model, "stride"):
        model.stride = torch.tensor([32.0])
    for m in model.modules():
        if isinstance(m, nn.Upsample) and not hasattr(m, "recompute_scale_factor"):
            m.recompute_scale_factor = None
    empty_grids(model)
    return model


def empty_grids(model: nn.Module) -> None:
    """Reset Detect's cached anchor grids (a tensor in checkpoints before release 6.0); rebuilt on the next
    forward."""
    head = model.model[-1]
    head.grid = [torch.empty(0) for _ in range(head.nl)]
    if "anchor_grid" in head._buffers:
        del head._buffers["anchor_grid"]
    head.anchor_grid = [torch.empty(0) for _ in range(head.nl)]


def as_ultralytics_output(preds) -> torch.Tensor:
    """Classic inference output (batch, N, 5 + nc) as Ultralytics' (batch, 4 + nc, N)."""
    p = preds[0] if isinstance(preds, (list, tuple)) else preds
    return torch.cat((p[..., :4], p[..., 5:] * p[..., 4:5]), -1).transpose(1, 2)


@torch.no_grad()
def fuse(model: nn.Module) -> nn.Module:
    """Fold every Conv's BatchNorm into its conv, in place (each Conv module with `conv`, `bn`, `forward_fuse`)."""
    from ultralytics.utils.torch_utils import fuse_conv_and_bn

    for m in model.modules():
        if isinstance(getattr(m, "conv", None), nn.Conv2d) and isinstance(getattr(m, "bn", None), nn.BatchNorm2d) \
                and hasattr(m, "forward_fuse"):
            m.conv = fuse_conv_and_bn(m.conv, m.bn)
            delattr(m, "bn")
            m.forward = m.forward_fuse
    return model


def checkpoint(model: nn.Module, date: str, train_args: dict, provenance: dict) -> dict:
    """The classic checkpoint layout (train.py's), holding `model` in fp16, with yoloprune's record beside it."""
    empty_grids(model)
    return {"epoch": -1, "best_fitness": None, "model": model.half().eval(), "ema": None, "updates": None,
            "optimizer": None, "opt": train_args, "git": None, "date": date, "yoloprune": provenance}


def export_onnx(model: nn.Module, imgsz: int, out: Path, batch: int, opset: int) -> Path:
    """Export a classic detector (a fused fp32 copy, Detect in export mode) as the classic export.py does."""
    import copy

    import onnx

    work = fuse(copy.deepcopy(model).float().eval())
    work.model[-1].export = True  # Detect returns the (batch, N, 5 + nc) tensor alone
    try:
        with warnings.catch_warnings():  # the tracer notes the forward's Python flags (augment, profile), as expected
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(work, torch.zeros(batch, 3, imgsz, imgsz), str(out), opset_version=opset,
                              dynamo=False, input_names=["images"], output_names=["output0"], do_constant_folding=True)
    except Exception as e:  # noqa: BLE001  torch.onnx raises many types; the user needs one line
        raise UserError(f"ONNX export failed ({type(e).__name__}: {str(e).strip().splitlines()[0][:160]})") from None
    exported = onnx.load(str(out))
    names = {int(k): str(v) for k, v in dict(model.names).items()}
    for key, value in {"stride": int(max(model.stride)), "names": names}.items():
        exported.metadata_props.add(key=key, value=str(value))
    onnx.save(exported, str(out))
    return out


def is_classic_onnx(meta: dict) -> bool:
    """Metadata of a classic export (stride and names only; Ultralytics' exporter also writes imgsz and task)."""
    return "names" in meta and "stride" in meta and "imgsz" not in meta


def check_onnx_detector(path: Path, input_shape: list, output_shape: list, classes: int) -> None:
    """Exit 2 unless a classic export is a detector at a fixed square size: output (batch, N, 5 + classes)."""
    if len(output_shape) != 3 or output_shape[-1] != 5 + classes:
        raise UserError(f"{path} is a classic YOLOv5 export with output {output_shape}, not a detector's "
                        f"(batch, N, {5 + classes}): a classification or segmentation model?")
    size = input_shape[2:]
    if not all(isinstance(k, int) for k in size):
        raise UserError(f"{path} was exported with a dynamic image size; export it at a fixed size (export.py "
                        "without --dynamic)")
