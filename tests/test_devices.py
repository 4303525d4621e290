"""--device: Ultralytics' syntax, resolved once; devices that cannot hold here exit 2 before anything is written."""

import json
import subprocess
import sys

import pytest
import torch

from yoloprune.devices import resolve_device, trainer_device
from yoloprune.errors import UserError

NO_CUDA = not torch.cuda.is_available()


def test_resolve_device():
    assert resolve_device("cpu") == resolve_device(" CPU ") == "cpu"
    assert resolve_device(None) == ("cpu" if NO_CUDA else "cuda:0")
    assert trainer_device("cpu") == "cpu" and trainer_device("cuda:1") == "1"
    for bad in ("gpu", "cuda", "cuda:x", "-1", "0,1"):
        with pytest.raises(UserError, match="unknown --device"):
            resolve_device(bad)
    if NO_CUDA:
        for spec in ("0", "cuda:0"):
            with pytest.raises(UserError, match="no CUDA device"):
                resolve_device(spec)
    else:
        assert resolve_device("0") == resolve_device("cuda:0") == "cuda:0"
        with pytest.raises(UserError, match="visible"):
            resolve_device(str(torch.cuda.device_count()))


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["eval", "finetune", "search", "sparsify", "demo"])
def test_a_device_that_cannot_hold_exits_2_and_writes_nothing(tmp_path, tiny_weights, tiny_data, command):
    args = {"eval": ["--weights", tiny_weights, "--data", tiny_data.yaml_path],
            "finetune": ["--weights", tiny_weights, "--data", tiny_data.yaml_path, "--project", tmp_path / "runs"],
            "search": ["--weights", tiny_weights, "--data", tiny_data.yaml_path, "--target-flops", "0.5",
                       "--project", tmp_path / "runs"],
            "sparsify": ["--weights", tiny_weights, "--data", tiny_data.yaml_path, "--epochs", "1",
                         "--project", tmp_path / "runs"],
            "demo": ["--out", tmp_path / "runs"]}[command]
    out = subprocess.run([sys.executable, "-m", "yoloprune", command, *map(str, args), "--device", "0"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1 and "no CUDA device" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_device_and_ray_workers_must_agree(tmp_path, tiny_weights, tiny_data):
    out = subprocess.run([sys.executable, "-m", "yoloprune", "search", "--weights", str(tiny_weights), "--data",
                          str(tiny_data.yaml_path), "--target-flops", "0.5", "--workers", "2", "--worker-gpus", "1",
                          "--device", "cpu", "--project", str(tmp_path / "runs")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "--worker-gpus" in out.stderr and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_explicit_cpu_device_runs_a_search_and_an_eval(tmp_path, tiny_weights, tiny_data):
    out = subprocess.run([sys.executable, "-m", "yoloprune", "search", "--weights", str(tiny_weights), "--data",
                          str(tiny_data.yaml_path), "--target-flops", "0.6", "--trials", "2", "--val-images", "6",
                          "--calib-images", "8", "--device", "cpu", "--project", str(tmp_path), "--json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    pruned = json.loads(out.stdout)["pruned"]
    assert torch.load(pruned, map_location="cpu", weights_only=False)["model"].model[0].conv.weight.device.type == "cpu"
    ev = subprocess.run([sys.executable, "-m", "yoloprune", "eval", "--weights", pruned, "--data",
                         str(tiny_data.yaml_path), "--val-images", "4", "--device", "cpu", "--json"],
                        capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0 and json.loads(ev.stdout)["images"] == 4, ev.stderr[-2000:]
