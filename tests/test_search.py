"""The search: budget projection, strategies, trial store, resume after a real kill, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from prune_helpers import cli_here
from ultralytics.nn.tasks import DetectionModel

from yoloprune.errors import UserError
from yoloprune.search.budget import Budget
from yoloprune.search.strategies import trust_region_length
from yoloprune.structure.groups import analyse


@pytest.fixture(scope="module")
def space():
    return analyse(DetectionModel("yolov8n.yaml", nc=10, verbose=False).eval(), imgsz=96)


def test_projection_meets_budget_just_under(space):
    budget = Budget(space, 0.5)
    rng = np.random.default_rng(0)
    raw = rng.random((64, len(space.groups))) * 0.9
    projected = budget.project(raw)
    ratios = budget.ratio(projected)
    assert np.all(ratios <= 0.5 + 1e-12)
    assert np.median(ratios) > 0.45, "projection should land near the budget, not far inside it"
    np.testing.assert_allclose(space.realised_rates(projected), projected)  # already realised


def test_impossible_and_invalid_budgets(space):
    with pytest.raises(UserError, match="impossible"):
        Budget(space, 0.001)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(UserError):
            Budget(space, bad)


def test_trust_region_shrinks_on_failures_and_grows_on_successes():
    assert trust_region_length(np.array([]), 50) == 0.4
    assert trust_region_length(np.array([0.5] + [0.1] * 5), 50) == 0.2
    assert trust_region_length(np.array([0.1, 0.2, 0.3]), 50) == 0.8


def search_cmd(weights, data, project, *extra):
    return [sys.executable, "-m", "yoloprune", "search", "--weights", str(weights), "--data", str(data),
            "--target-flops", "0.6", "--val-images", "6", "--calib-images", "8", "--project", str(project), *extra]


@pytest.mark.slow
def test_search_kill_and_resume_loses_and_repeats_nothing(tmp_path, tiny_weights, tiny_data):
    project = tmp_path / "runs"
    proc = subprocess.Popen(search_cmd(tiny_weights, tiny_data.yaml_path, project, "--trials", "9", "--name", "r"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = project / "r" / "trials.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 5):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = log.read_text().splitlines()
    assert 5 <= len(before) < 9
    done = subprocess.run(search_cmd(tiny_weights, tiny_data.yaml_path, project, "--trials", "9", "--name", "r",
                                     "--resume", "--json"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    after = log.read_text().splitlines()
    assert after[: len(before)] == before
    assert [json.loads(line)["trial"] for line in after] == list(range(9))
    assert summary["trials"] == 9 and (project / "r" / "pruned.pt").exists()
    for name in ("best_rates.yaml", "summary.json", "progress.png", "map_vs_flops.png", "best_rates.png"):
        assert (project / "r" / name).exists(), name
    assert summary["best"]["flops_ratio"] <= 0.6
    rates = yaml.safe_load((project / "r" / "best_rates.yaml").read_text())
    assert all(0 <= v < 1 for v in rates.values())


@pytest.mark.parametrize("strategy, trials", [("uniform", 5), ("global", 5), ("random", 4), ("bocr", 5), ("saas", 4)])
def test_every_strategy_runs_within_budget(tmp_path, tiny_weights, tiny_data, strategy, trials):
    out = subprocess.run(search_cmd(tiny_weights, tiny_data.yaml_path, tmp_path, "--trials", str(trials),
                                    "--strategy", strategy, "--json"), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    lines = (tmp_path / "exp" / "trials.jsonl").read_text().splitlines()
    assert len(lines) == (1 if strategy in ("uniform", "global") else trials) == summary["trials"]
    assert all(json.loads(line)["flops_ratio"] <= 0.6 + 1e-9 for line in lines)


def test_resume_refuses_a_different_budget(tmp_path, tiny_weights, tiny_data):
    first = subprocess.run(search_cmd(tiny_weights, tiny_data.yaml_path, tmp_path, "--trials", "1",
                                      "--strategy", "uniform"), capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    cmd = search_cmd(tiny_weights, tiny_data.yaml_path, tmp_path, "--strategy", "uniform", "--resume")
    cmd[cmd.index("0.6")] = "0.5"
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2 and "target_flops" in out.stderr


@pytest.mark.parametrize("extra, fragment", [
    (["--target-flops", "0.001"], "impossible"),
    (["--target-flops", "1.0"], "(0, 1)"),
    (["--trials", "0"], "--trials"),
    (["--strategy", "magic"], "unknown strategy"),
    (["--strategy", "sensitivity", "--trials", "4"], "--trials >= 5"),
    (["--strategy", "hdbo-warm", "--trials", "7"], "--trials >= 8"),
    (["--criterion", "magic"], "--criterion"),
    (["--distill"], "--finetune-epochs"),
    (["--distill-weight", "1"], "add --distill"),
    (["--finetune-epochs", "1", "--distill", "--distill-weight", "-1"], "> 0"),
    (["--finetune-epochs", "1", "--finetune-lr0", "0"], "--finetune-lr0 must be > 0"),
])
def test_search_bad_input(tmp_path, tiny_weights, tiny_data, extra, fragment):
    cmd = search_cmd(tiny_weights, tiny_data.yaml_path, tmp_path / "runs")
    if extra[0] == "--target-flops":
        cmd[cmd.index("0.6")] = extra[1]
    else:
        cmd += extra
    r = cli_here(*cmd[3:])  # a traceback would raise here
    assert r.returncode == 2 and fragment in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("trials.jsonl"))


def test_same_seed_same_search(tmp_path, tiny_weights, tiny_data):
    runs = []
    for name in ("a", "b"):
        out = subprocess.run(search_cmd(tiny_weights, tiny_data.yaml_path, tmp_path, "--trials", "5", "--name", name,
                                        "--seed", "3"), capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append([json.loads(line)["rates"] for line in (tmp_path / name / "trials.jsonl").read_text().splitlines()])
    assert runs[0] == runs[1]


def test_run_store_drops_a_torn_last_line(tmp_path):
    from yoloprune.search.store import RunStore

    store = RunStore(tmp_path)
    store.append_trial({"trial": 0})
    store.append_trial({"trial": 1})
    with open(store.trials_path, "a") as f:
        f.write('{"trial": 2, "rat')
    assert store.trials() == [{"trial": 0}, {"trial": 1}]
    assert store.trials_path.read_text().count("\n") == 2  # the torn line is gone from the file too


@pytest.mark.slow
def test_search_finetunes_the_best_candidate_when_asked(tmp_path, tiny_weights, tiny_data):
    from yoloprune import api

    out = subprocess.run(search_cmd(tiny_weights, tiny_data.yaml_path, tmp_path, "--strategy", "uniform",
                                    "--finetune-epochs", "1", "--finetune-lr0", "0.004", "--distill", "--json"),
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    train_args = yaml.safe_load((Path(summary["finetuned"]).parent.parent / "args.yaml").read_text())
    assert train_args["lr0"] == 0.004, "--finetune-lr0 reaches the trainer"
    tuned, pruned = api.load(summary["finetuned"]).model, api.load(summary["pruned"]).model
    assert [p.shape for p in tuned.parameters()] == [p.shape for p in pruned.parameters()]
    assert 0.0 <= summary["finetuned_final_check_map50_95"] <= 1.0 and summary["finetune_epochs"] == 1
