"""Fine-tuning keeps the pruned architecture; the latency benchmark reports what it promises."""

import json
import subprocess
import sys

import pytest
import torch
import yaml
from ultralytics.nn.tasks import DetectionModel

from yoloprune import api
from yoloprune.checkpoint import save_checkpoint
from yoloprune.default.problem import DEFAULT_WEIGHTS


def shapes(model):
    return [tuple(p.shape) for p in model.parameters()]


@pytest.fixture(scope="module")
def pruned_tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("ft") / "base.pt"
    save_checkpoint(DetectionModel("yolov8n.yaml", nc=10, verbose=False), base, {"imgsz": 96}, {})
    loaded = api.load(base)
    result = api.prune(loaded, api.uniform_rates(api.analyse(loaded), 0.5))
    return api.save_pruned(result, loaded, base.with_name("pruned.pt"))


@pytest.mark.slow
def test_finetune_keeps_shapes_and_reloads(tmp_path, monkeypatch, pruned_tiny, tiny_data):
    from ultralytics import YOLO

    from yoloprune.training.finetune import finetune

    monkeypatch.chdir(tmp_path)  # a relative project lands where it says, not under runs/detect/
    best = finetune(pruned_tiny, tiny_data.yaml_path, 1, project="out", name="ft", workers=0, batch=8)
    assert best.resolve().is_relative_to(tmp_path / "out" / "ft")
    before, after = api.load(pruned_tiny).model, YOLO(str(best)).model
    assert shapes(before) == shapes(after)
    full = DetectionModel("yolov8n.yaml", nc=10, verbose=False)
    assert api.param_count(after) < api.param_count(full)


@pytest.mark.slow
def test_finetune_distils_from_the_unpruned_model(tmp_path, pruned_tiny, tiny_data):
    import csv

    from ultralytics import YOLO

    from yoloprune.training.finetune import finetune

    teacher = pruned_tiny.with_name("base.pt")
    best = finetune(pruned_tiny, tiny_data.yaml_path, 1, distill=teacher, distill_weight=2.0, project=str(tmp_path),
                    name="kd", workers=0, batch=8)
    assert yaml.safe_load((tmp_path / "kd" / "args.yaml").read_text())["dis"] == 2.0  # --distill-weight reached it
    rows = list(csv.DictReader(open(tmp_path / "kd" / "results.csv")))
    dis = [float(v) for k, v in rows[-1].items() if "dis_loss" in k and k.strip().startswith("train")]
    assert dis and dis[0] > 0  # the feature loss against the teacher was trained on
    assert shapes(YOLO(str(best)).model) == shapes(api.load(pruned_tiny).model)  # the student alone, pruned


def test_the_default_rate_follows_the_schedule_length_and_an_explicit_rate_wins(pruned_tiny, tiny_data):
    from yoloprune.training.finetune import LONG_LR0, LONG_SCHEDULE_EPOCHS, SHORT_LR0, train_args_for

    def lr0(epochs: int, **overrides) -> float:
        return train_args_for(pruned_tiny, tiny_data.yaml_path, epochs, overrides)["lr0"]

    assert SHORT_LR0 < LONG_LR0
    assert lr0(1) == lr0(LONG_SCHEDULE_EPOCHS - 1) == SHORT_LR0
    assert lr0(LONG_SCHEDULE_EPOCHS) == lr0(30) == LONG_LR0
    assert lr0(30, lr0=0.003) == lr0(1, lr0=0.003) == 0.003 and lr0(30, lr0=None) == LONG_LR0


def test_finetune_refuses_a_bad_teacher_or_rate(tmp_path, pruned_tiny, tiny_data):
    from yoloprune.errors import UserError
    from yoloprune.training.finetune import finetune

    with pytest.raises(UserError, match="not found"):
        finetune(pruned_tiny, tiny_data.yaml_path, 1, distill=tmp_path / "missing.pt", project=str(tmp_path))
    other = tmp_path / "other.pt"
    save_checkpoint(DetectionModel("yolov8n.yaml", nc=3, verbose=False), other, {"imgsz": 96}, {})
    with pytest.raises(UserError, match="classes"):
        finetune(pruned_tiny, tiny_data.yaml_path, 1, distill=other, project=str(tmp_path))
    with pytest.raises(UserError, match="add --distill"):
        finetune(pruned_tiny, tiny_data.yaml_path, 1, distill_weight=1.0, project=str(tmp_path))
    with pytest.raises(UserError, match="> 0"):
        finetune(pruned_tiny, tiny_data.yaml_path, 1, distill=pruned_tiny, distill_weight=0.0, project=str(tmp_path))
    with pytest.raises(UserError, match="--lr0 must be > 0"):
        finetune(pruned_tiny, tiny_data.yaml_path, 1, lr0=-0.01, project=str(tmp_path))
    assert not list(tmp_path.rglob("results.csv"))


@pytest.mark.slow
@pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="default weights not trained yet")
def test_short_finetune_recovers_map_on_default_problem(tmp_path):
    from yoloprune.default.problem import default_dataset
    from yoloprune.training.finetune import finetune

    data = default_dataset()
    loaded = api.load(DEFAULT_WEIGHTS)
    result = api.prune(loaded, api.uniform_rates(api.analyse(loaded), 0.25))
    pruned = api.save_pruned(result, loaded, tmp_path / "pruned.pt")
    before = api.evaluate(pruned, data.yaml_path, split="test", val_images=100)
    best = finetune(pruned, data.yaml_path, 1, fraction=0.1, project=str(tmp_path), name="ft", workers=0, batch=16,
                    val=False)
    after = api.evaluate(best, data.yaml_path, split="test", val_images=100)
    assert shapes(api.load(best).model) == shapes(result.model)
    assert after.map50_95 > before.map50_95


def test_bench_json(tmp_path, pruned_tiny):
    base = pruned_tiny.with_name("base.pt")
    out = subprocess.run([sys.executable, "-m", "yoloprune", "bench", "--weights", str(base), str(pruned_tiny),
                          "--imgsz", "96", "--threads", "1", "--runs", "3", "--warmup", "1", "--json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    payload = json.loads(out.stdout)
    a, b = payload["models"]
    assert a["threads"]["1"]["speedup"] == pytest.approx(1.0)
    assert b["flops"] < a["flops"] and b["params"] < a["params"] and b["onnx_bytes"] < a["onnx_bytes"]
    for m in (a, b):
        assert {"p50_ms", "p90_ms", "p99_ms", "throughput_ips", "speedup"} <= m["threads"]["1"].keys()
        assert m["onnx_max_abs_diff"] < 1e-2


def test_bench_rejects_more_threads_than_cores(pruned_tiny):
    import os

    out = subprocess.run([sys.executable, "-m", "yoloprune", "bench", "--weights", str(pruned_tiny),
                          "--threads", str((os.cpu_count() or 1) + 1)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "visible cores" in out.stderr


def test_bench_says_so_when_a_model_fails_to_export(tmp_path):
    model = DetectionModel("yolov8n.yaml", nc=10, verbose=False)
    model.model[0].act = torch.nn.AdaptiveMaxPool2d((7, 7))  # stock module; the forward no longer fits together
    broken = tmp_path / "broken.pt"
    save_checkpoint(model, broken, {"imgsz": 96}, {})
    out = subprocess.run([sys.executable, "-m", "yoloprune", "bench", "--weights", str(broken), "--threads", "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "ONNX export failed" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_bench_batch_exports_at_that_batch(tmp_path, pruned_tiny):
    from yoloprune.latency.bench import benchmark, export_onnx

    two = benchmark([str(pruned_tiny)], 96, (1,), batch=2, runs=2, warmup=0)[0]
    assert two.max_abs_diff < 1e-2 and two.latency[1]["throughput_ips"] > 0, "fed 2 images to a batch-2 export"
    single, _ = export_onnx(str(pruned_tiny), 96, tmp_path, batch=1)
    out = subprocess.run([sys.executable, "-m", "yoloprune", "bench", "--weights", str(single), "--imgsz", "96",
                          "--batch", "2", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "exported for batch 1" in out.stderr and "Traceback" not in out.stderr
