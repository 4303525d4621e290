"""The command line contract: --json output, and bad input -> one line, exit 2, nothing written."""

import json
import subprocess
import sys

import pytest
from prune_helpers import cli_here

from yoloprune.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "yoloprune", *args], capture_output=True, text=True, timeout=300)


def assert_clean_error(result, fragment):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert fragment in lines[0]


def test_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0
    for command in ("layers", "prune", "eval", "search", "bench", "finetune", "demo"):
        assert command in out.stdout


def test_layers_json(capsys):
    assert main(["layers", "--weights", "yolov8n.yaml", "--imgsz", "96", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert {"groups", "fixed", "prunable_flops_share", "flops", "params"} <= payload.keys()
    g = payload["groups"][0]
    assert {"name", "channels", "min_keep", "flops_share", "members"} <= g.keys()
    assert all({"module", "reason"} <= f.keys() for f in payload["fixed"])


def test_prune_json_and_rates_file(tmp_path, capsys):
    rates = tmp_path / "rates.yaml"
    rates.write_text("model.2.cv1: 0.5\nmodel.4.cv1: 0.25\n")
    out = tmp_path / "p.pt"
    assert main(["prune", "--weights", "yolov8n.yaml", "--imgsz", "96", "--rates", str(rates),
                 "--out", str(out), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["out"] == str(out) and out.exists()
    assert payload["flops_after"] < payload["flops_before"] and payload["params_after"] < payload["params_before"]


@pytest.mark.parametrize("rates_text, fragment", [
    ("nonexistent.group: 0.5\n", "unknown group name"),
    ("model.2.cv1: 1.0\n", "[0, 1)"),
    ("model.2.cv1: -0.1\n", "[0, 1)"),
    ("- just a list\n", "must map group names"),
])
def test_prune_bad_rates(tmp_path, rates_text, fragment):
    rates = tmp_path / "rates.yaml"
    rates.write_text(rates_text)
    out = tmp_path / "p.pt"
    result = cli_here("prune", "--weights", "yolov8n.yaml", "--imgsz", "96", "--rates", str(rates), "--out", str(out))
    assert_clean_error(result, fragment)
    assert list(tmp_path.iterdir()) == [rates], "nothing may be written on bad input"


def test_bad_weights(tmp_path):
    assert_clean_error(cli_here("layers", "--weights", str(tmp_path / "missing.pt")), "not found")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert_clean_error(cli_here("layers", "--weights", str(junk)), "not a readable PyTorch checkpoint")
    other = tmp_path / "other.pt"
    import torch

    torch.save({"model": {"weights": [1, 2, 3]}}, other)
    assert_clean_error(cli_here("layers", "--weights", str(other)), "not an Ultralytics detection checkpoint")
    bad_ratio = cli_here("prune", "--weights", "yolov8n.yaml", "--ratio", "1.5", "--out", str(tmp_path / "x.pt"))
    assert_clean_error(bad_ratio, "outside [0, 1)")
    assert not (tmp_path / "x.pt").exists()


def test_eval_bad_data(tmp_path, tiny_data):
    missing = cli_here("eval", "--weights", "yolov8n.yaml", "--data", str(tmp_path / "none.yaml"))
    assert_clean_error(missing, "not found")
    result = cli_here("eval", "--weights", "yolov8n.yaml", "--data", str(tiny_data.yaml_path), "--imgsz", "96")
    assert_clean_error(result, "class mismatch")
    result = cli_here("eval", "--weights", "yolov8n.yaml", "--data", str(tiny_data.yaml_path), "--val-images", "0")
    assert_clean_error(result, "--val-images")


def test_eval_json_on_yaml_and_coco(default_problem):
    weights, data = default_problem
    a = run("eval", "--weights", str(weights), "--data", str(data.yaml_path), "--val-images", "24", "--json")
    b = run("eval", "--weights", str(weights), "--data", str(data.coco_json("val")), "--val-images", "24", "--json")
    ra, rb = json.loads(a.stdout), json.loads(b.stdout)
    assert ra["images"] == rb["images"] == 24
    assert ra["map50_95"] > 0.3, "a model that detects something: agreement between two zeros proves nothing"
    assert ra["map50_95"] == pytest.approx(rb["map50_95"], abs=1e-6)


def test_prune_says_when_bn_falls_back_to_l1(tmp_path):
    from ultralytics.nn.tasks import DetectionModel

    from yoloprune.checkpoint import save_checkpoint

    fused = DetectionModel("yolov8n.yaml", nc=10, verbose=False).eval().fuse(verbose=False)
    save_checkpoint(fused, tmp_path / "fused.pt", {"imgsz": 96}, {})
    out = run("prune", "--weights", str(tmp_path / "fused.pt"), "--ratio", "0.3", "--out", str(tmp_path / "p.pt"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "has no BatchNorm; channels ranked by 'l1'" in out.stdout
    payload = json.loads(run("prune", "--weights", str(tmp_path / "fused.pt"), "--ratio", "0.3", "--out",
                             str(tmp_path / "q.pt"), "--json").stdout)
    assert payload["criterion"] == "l1"
