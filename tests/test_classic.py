"""Classic YOLOv5 checkpoints (the ultralytics/yolov5 repository), through the `yolov5` package's code."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from prune_helpers import cli_here, randomise_bn

from yoloprune import classic
from yoloprune.checkpoint import load, save_checkpoint
from yoloprune.evaluation.inference import OnnxDetector, fused_copy
from yoloprune.structure.groups import analyse
from yoloprune.structure.pruner import prune, removed_units, zeroed

IMGSZ = 96
CLASSIC_TOOLS_ENV = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}  # the package's torch.load predates 2.6


def classic_yaml(name: str) -> Path:
    import importlib.util

    return Path(importlib.util.find_spec("yolov5").origin).parent / "models" / name


def save_classic(model, path: Path, zipped: bool = True) -> Path:
    """A checkpoint in train.py's layout, pickled under the classic module names."""
    torch.save({"epoch": 3, "best_fitness": None, "model": model.half(), "ema": None, "updates": None,
                "optimizer": None, "opt": {"imgsz": IMGSZ}}, path, _use_new_zipfile_serialization=zipped)
    return path


@pytest.fixture(scope="module")
def classic_weights(tmp_path_factory, tiny_data):
    """A random-init classic yolov5n (BN statistics randomised, so outputs differ per channel) for the tiny data."""
    import yaml

    assert classic.make_importable()
    from models.yolo import DetectionModel

    names = yaml.safe_load(Path(tiny_data.yaml_path).read_text())["names"]
    model = DetectionModel(str(classic_yaml("yolov5n.yaml")), nc=len(names))
    model.names = names
    return save_classic(randomise_bn(model.eval()), tmp_path_factory.mktemp("classic") / "yolov5n-classic.pt")


def test_classic_checkpoint_loads_with_groups_and_a_fixed_anchor_head(classic_weights):
    loaded = load(classic_weights)
    assert classic.is_classic(loaded.model) and loaded.imgsz == IMGSZ
    space = analyse(loaded.model, loaded.imgsz)
    assert len(space.groups) >= 40  # every backbone and neck conv, C3 internals and SPPF included
    head = {f["module"] for f in space.fixed}
    assert head == {"model.24.m.0", "model.24.m.1", "model.24.m.2"}  # only Detect's anchor-based output convs


def test_classic_pruned_equals_zeroed_and_reloads_with_the_classic_tools(classic_weights, tmp_path):
    from yoloprune import api

    loaded = load(classic_weights)
    space = analyse(loaded.model, loaded.imgsz)
    rates = {g.name: 0.4 for g in space.groups}
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    pruned = prune(loaded.model, space, rates)
    with torch.no_grad(), zeroed(loaded.model, space, removed_units(space, rates)):
        expected = loaded.model.eval()(x)[0]
    with torch.no_grad():
        got = pruned.eval()(x)[0]
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert sum(p.numel() for p in pruned.parameters()) < 0.5 * sum(p.numel() for p in loaded.model.parameters())

    out = tmp_path / "pruned.pt"
    api.save_pruned(api.prune(loaded, rates), loaded, out)
    ckpt = torch.load(out, weights_only=False)
    assert {"model", "ema", "epoch", "opt"} <= set(ckpt) and "train_args" not in ckpt  # the classic layout
    torch.save(x, tmp_path / "x.pt")
    script = (f"import torch, yolov5; from yolov5.models.common import DetectMultiBackend; "
              f"x = torch.load(r'{tmp_path / 'x.pt'}'); "
              f"m = DetectMultiBackend(r'{out}', device=torch.device('cpu')); "
              f"hub = yolov5.load(r'{out}', device='cpu', autoshape=False); "
              f"torch.save([m(x)[0], hub(x)[0]], r'{tmp_path / 'y.pt'}')")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=CLASSIC_TOOLS_ENV,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    reloaded = load(out).model
    with torch.no_grad():
        ours = reloaded(x)[0]
    for theirs in torch.load(tmp_path / "y.pt"):
        assert torch.allclose(theirs, ours, atol=1e-3, rtol=1e-3)


def test_classic_onnx_export_matches_pytorch_and_evaluates(classic_weights, tmp_path, tiny_data):
    from yoloprune import api

    [bench] = api.bench([str(classic_weights)], imgsz=IMGSZ, threads=(1,), runs=2, warmup=0)
    assert bench.max_abs_diff < 1e-3 and bench.latency[1]["p50_ms"] > 0
    model = load(classic_weights).model
    onnx_path = classic.export_onnx(model, IMGSZ, tmp_path / "m.onnx", 1, 17)
    onnx_model = OnnxDetector(onnx_path)
    assert onnx_model.classic and onnx_model.imgsz == IMGSZ and onnx_model.names == model.names
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        expected = classic.as_ultralytics_output(fused_copy(model)(x))
    assert expected.shape[1] == 4 + len(model.names)
    assert torch.allclose(onnx_model(x), expected, atol=1e-3, rtol=1e-3)
    result = cli_here("eval", "--weights", onnx_path, "--data", tiny_data.yaml_path, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["images"] > 0


def test_classic_detections_match_the_classic_nms(classic_weights):
    """predict() (output adapter + Ultralytics' NMS) keeps what the classic val.py's NMS keeps, with its settings."""
    from yolov5.utils.general import non_max_suppression

    from yoloprune.evaluation.inference import CONF, IOU, MAX_DET, predict

    model = load(classic_weights).model
    pixels = (torch.rand(3, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    ours = predict(model, pixels)
    with torch.no_grad():
        raw = fused_copy(model)(pixels.float() / 255)[0]
    theirs = non_max_suppression(raw, CONF, IOU, multi_label=True, max_det=MAX_DET)
    assert sum(len(d) for d in ours) > 0
    for a, b in zip(ours, theirs):
        a, b = a[a[:, 4].argsort(descending=True)], b[b[:, 4].argsort(descending=True)]
        assert len(a) == len(b)
        assert torch.allclose(a[:, 4], b[:, 4], atol=1e-4) and torch.allclose(a[:, :4], b[:, :4], atol=1e-2)


def test_classic_model_takes_the_channels_last_layout_after_a_forward(classic_weights, tmp_path):
    """The layout move Ultralytics' trainer (CUDA) and loader make, on a model whose anchor grids were filled."""
    from yoloprune.evaluation.inference import channels_last

    model = load(classic_weights).model
    with torch.no_grad():
        model(torch.zeros(1, 3, IMGSZ, IMGSZ))
    assert model.model[-1].anchor_grid[0].dim() == 5
    with channels_last(model), torch.no_grad():
        model(torch.zeros(1, 3, IMGSZ, IMGSZ))
    assert model.model[-1].anchor_grid[0].dim() == 5  # filled again: what a checkpoint saved now would hold
    saved = save_checkpoint(model, tmp_path / "resaved.pt", {}, {})
    torch.load(saved, weights_only=False)["model"].float().to(memory_format=torch.channels_last)


def test_classic_search_runs_three_trials_and_refuses_ultralytics_only_options(classic_weights, tiny_data, tmp_path):
    common = ("--weights", classic_weights, "--data", tiny_data.yaml_path, "--target-flops", "0.5",
              "--val-images", "8", "--calib-images", "8", "--project", tmp_path)
    result = cli_here("search", *common, "--trials", "3", "--name", "s", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["best"]["flops_ratio"] <= 0.5
    assert classic.is_classic(load(summary["pruned"]).model)
    for extra in (("--score", "recovered"), ("--finetune-epochs", "1", "--distill"),
                  ("--sparsify-epochs", "1", "--finetune-epochs", "1")):
        refused = cli_here("search", *common, "--trials", "3", "--name", "t", *extra)
        assert refused.returncode == 2 and "classic YOLOv5" in refused.stderr and refused.stderr.count("\n") == 1
        assert not (tmp_path / "t").exists()


def test_classic_finetune_keeps_the_pruned_network_and_the_classic_layout(classic_weights, tiny_data, tmp_path):
    from yoloprune import api

    loaded = load(classic_weights)
    pruned_path = api.save_pruned(api.prune(loaded, {g.name: 0.4 for g in api.analyse(loaded).groups}), loaded,
                                  tmp_path / "pruned.pt")
    pruned = load(pruned_path).model
    result = cli_here("finetune", "--weights", pruned_path, "--data", tiny_data.yaml_path, "--epochs", "1",
                      "--project", tmp_path, "--name", "ft", "--json")
    assert result.returncode == 0, result.stderr
    tuned_path = json.loads(result.stdout)["best"]
    ckpt = torch.load(tuned_path, weights_only=False)
    assert {"model", "ema", "epoch", "opt"} <= set(ckpt) and "train_args" not in ckpt
    tuned = load(tuned_path).model
    assert classic.is_classic(tuned)
    shapes = {k: v.shape for k, v in pruned.state_dict().items()}
    assert {k: v.shape for k, v in tuned.state_dict().items()} == shapes  # the pruned network, not a YAML rebuild
    changed = [k for k, v in tuned.state_dict().items() if k.endswith("conv.weight")
               and not torch.equal(v, pruned.state_dict()[k])]
    assert changed  # it was trained
    assert "--distill" in cli_here("finetune", "--weights", pruned_path, "--data", tiny_data.yaml_path, "--epochs",
                                   "1", "--distill", classic_weights).stderr


def test_classic_bad_input(classic_weights, tmp_path):
    result = cli_here("layers", "--weights", classic_weights, "--yolov5-repo", tmp_path / "no-clone")
    assert result.returncode == 2 and "--yolov5-repo" in result.stderr and result.stderr.count("\n") == 1

    from models.yolo import ClassificationModel, DetectionModel, SegmentationModel

    seg = SegmentationModel(str(classic_yaml("segment/yolov5n-seg.yaml")), nc=3)
    cls = ClassificationModel(model=DetectionModel(str(classic_yaml("yolov5n.yaml")), nc=3), nc=3, cutoff=10)
    for model, task in ((seg, "segmentation"), (cls, "classification")):
        result = cli_here("layers", "--weights", save_classic(model, tmp_path / f"{task}.pt"))
        assert result.returncode == 2 and f"classic YOLOv5 {task}" in result.stderr

    cls.names = {0: "a", 1: "b", 2: "c"}
    onnx_cls = classic.export_onnx(cls, 64, tmp_path / "cls.onnx", 1, 17)
    result = cli_here("eval", "--weights", onnx_cls, "--data", "unused.yaml")
    assert result.returncode == 2 and "not a detector" in result.stderr


def test_classic_checkpoint_without_the_classic_code(classic_weights, tmp_path):
    """In a process where the yolov5 package cannot be imported (and no clone is on sys.path)."""
    from yolov5.models.yolo import DetectionModel

    package_pickled = tmp_path / "package.pt"  # what the yolov5 package's own train.py saves
    torch.save({"model": DetectionModel(str(classic_yaml("yolov5n.yaml")), nc=3)}, package_pickled)
    for weights, fragments in ((classic_weights, ("ultralytics/yolov5", "pip install --no-deps yolov5",
                                                  "--yolov5-repo")),
                               (package_pickled, ("saved by the yolov5 package", "pip install --no-deps yolov5"))):
        script = (f"import sys; sys.modules['yolov5'] = None; from yoloprune.cli import main; "
                  f"sys.exit(main(['layers', '--weights', r'{weights}']))")
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                             cwd=tmp_path)
        assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr[-1500:]
        assert all(f in run.stderr for f in fragments), run.stderr


def test_yolov5_repo_points_at_a_clone(classic_weights, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    clone = classic_yaml("yolov5n.yaml").parent.parent  # the package folder is laid out like a clone
    result = cli_here("layers", "--weights", classic_weights, "--yolov5-repo", clone, "--json")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["groups"]) >= 40
