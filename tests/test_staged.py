"""Candidate scores (recovered, agreement), regime detection and the staged search with recovery."""

import copy
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from prune_helpers import cli_here

from yoloprune import api
from yoloprune.default.problem import DEFAULT_WEIGHTS
from yoloprune.evaluation.evaluator import TrialEvaluator
from yoloprune.evaluation.scores import agreement, class_maps
from yoloprune.structure.pruner import prune


@pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="default weights not trained yet")
def test_short_recovery_restores_signal_to_a_collapsed_candidate():
    """Half the channels of every group cut: mAP after recalibration collapses; 20 recovery steps bring it back."""
    from yoloprune.default.problem import default_dataset

    loaded = api.load(DEFAULT_WEIGHTS)
    space = api.analyse(loaded)
    pruned = prune(loaded.model, space, {n: 0.5 for n in space.names})
    data = default_dataset()
    ev = TrialEvaluator(data.yaml_path, loaded.model.names, loaded.imgsz, val_images=60, calib_images=64)
    recovered = TrialEvaluator(data.yaml_path, loaded.model.names, loaded.imgsz, val_images=60, calib_images=64,
                               score="recovered")
    plain = ev.score(copy.deepcopy(pruned))
    after = recovered.score(pruned)
    assert plain.score == plain.map50_95 < 0.1
    assert after.score == after.map50_95 > plain.map50_95 + 0.1
    assert not pruned.training and not any(p.requires_grad for p in pruned.parameters())
    dfl = pruned.model[-1].dfl.conv.weight
    torch.testing.assert_close(dfl.flatten(), torch.arange(dfl.numel(), dtype=dfl.dtype))  # the fixed decoder


def test_agreement_is_one_for_the_same_model_and_lower_for_a_pruned_one(default_problem):
    weights, data = default_problem
    loaded = api.load(weights)
    ev = TrialEvaluator(data.yaml_path, loaded.model.names, 192, val_images=16, calib_images=16, score="agreement",
                        reference=loaded.model)
    same = agreement(class_maps(copy.deepcopy(loaded.model), ev.search_images.pixels), ev.reference_maps)
    assert same == pytest.approx(1.0, abs=1e-5)
    space = api.analyse(loaded)
    light = ev.score(prune(loaded.model, space, {n: 0.25 for n in space.names}))
    heavy = ev.score(prune(loaded.model, space, {n: 0.75 for n in space.names}))
    assert 0.0 < heavy.score < light.score < 0.999, "the harder the cut, the less the outputs agree"
    assert light.map50_95 > heavy.map50_95, "and mAP (reported beside the score) falls with it"


def staged_cmd(weights, data, project, *extra):
    return [sys.executable, "-m", "yoloprune", "search", "--weights", str(weights), "--data", str(data),
            "--target-flops", "0.5", "--val-images", "6", "--calib-images", "8", "--project", str(project),
            "--finetune-fraction", "0.5", *extra]


@pytest.mark.slow
def test_staged_search_killed_in_stage_two_resumes_without_redoing_stage_one(tmp_path, tiny_weights, tiny_data):
    project = tmp_path / "runs"
    args = ("--stages", "2", "--recover-epochs", "1", "--trials", "8", "--name", "s")
    proc = subprocess.Popen(staged_cmd(tiny_weights, tiny_data.yaml_path, project, *args),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log2 = project / "s" / "stage2" / "trials.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and (not log2.exists() or len(log2.read_text().splitlines()) < 1):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stage1 = project / "s" / "stage1"
    kept = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in stage1.rglob("*") if p.is_file()}
    assert (stage1 / "summary.json").exists() and len(log2.read_text().splitlines()) < 4
    before2 = log2.read_text().splitlines()
    done = subprocess.run(staged_cmd(tiny_weights, tiny_data.yaml_path, project, *args, "--resume", "--json"),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in kept} == kept, "stage 1 was redone"
    after2 = log2.read_text().splitlines()
    assert after2[: len(before2)] == before2 and [json.loads(t)["trial"] for t in after2] == list(range(4))
    assert summary["stages"] == 2 and summary["trials"] == 8 and summary["flops_ratio"] <= 0.5 + 1e-6
    assert len(summary["stage_summaries"]) == 2 and all("finetuned" in s for s in summary["stage_summaries"])
    assert summary["stage_summaries"][0]["regime"] in ("collapsed", "redundant", "unscored")
    final = api.load(summary["pruned"])
    assert api.param_count(final.model) == summary["params"] < summary["params_before"]


@pytest.mark.parametrize("extra, fragment", [
    (["--stages", "0"], "--stages"),
    (["--stages", "two"], "--stages"),
    (["--stages", "20"], "at most"),
    (["--stages", "2", "--recover-epochs", "-1"], "--recover-epochs"),
    (["--stages", "2", "--finetune-epochs", "1"], "--recover-epochs"),
    (["--score", "recovered", "--no-recalibrate"], "recalibrat"),
])
def test_staged_search_bad_input(tmp_path, tiny_weights, tiny_data, extra, fragment):
    r = cli_here(*staged_cmd(tiny_weights, tiny_data.yaml_path, tmp_path / "runs", *extra)[3:])
    assert r.returncode == 2 and fragment in r.stderr, r.stderr  # a traceback would raise here
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_regime_is_reported_and_a_collapse_is_named():
    from yoloprune.search.report import classify_regime

    messages = []
    r = classify_regime([0.02, 0.05], 0.5, messages.append)
    assert r["regime"] == "collapsed" and r["best_initial_share"] == pytest.approx(0.1)
    assert len(messages) == 1 and "--stages" in messages[0] and "--score recovered" in messages[0]
    assert classify_regime([0.2, 0.3], 0.5, messages.append)["regime"] == "redundant" and len(messages) == 1
    assert classify_regime([0.0], 0.0, messages.append)["regime"] == "unscored" and len(messages) == 1


@pytest.mark.slow
def test_stages_auto_resolves_a_stage_count_and_records_it(tmp_path, tiny_weights, tiny_data):
    out = subprocess.run(staged_cmd(tiny_weights, tiny_data.yaml_path, tmp_path, "--stages", "auto", "--trials", "4",
                                    "--recover-epochs", "0", "--json"), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    meta = json.loads((tmp_path / "exp" / "meta.json").read_text())
    assert meta["stages"] == "auto" and meta["stages_resolved"] == summary["stages"] in (1, 2)
    assert "stages auto:" in out.stderr and summary["flops_ratio"] <= 0.5 + 1e-6
