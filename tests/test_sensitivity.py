"""The sensitivity baseline (the peers' per-group scan and allocation) and hdbo's warm start from it."""

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from test_search import search_cmd
from ultralytics.nn.tasks import DetectionModel

from yoloprune.errors import UserError
from yoloprune.search.budget import Budget
from yoloprune.search.sensitivity import allocate, loss_curves, plan_scan
from yoloprune.search.strategies import Sensitivity, auto_strategy
from yoloprune.structure.groups import analyse


@pytest.fixture(scope="module")
def space():
    return analyse(DetectionModel("yolov8n.yaml", nc=10, verbose=False).eval(), imgsz=96)


def synthetic_scores(plan, sensitivity: np.ndarray, base: float = 0.7) -> np.ndarray:
    """Scan scores of a model whose loss is additive: each group loses sensitivity x rate^2."""
    return np.array([base - float(sensitivity @ p ** 2) for p in plan.points])


def test_scan_plan_is_per_group_when_trials_allow_and_blocks_otherwise(space):
    g = len(space.groups)
    budget = Budget(space, 0.5)
    full = plan_scan(budget, 1 + 3 * g)
    assert len(full.blocks) == g and len(full.points) == 1 + 3 * g
    assert not full.points[0].any()  # the unpruned model comes first
    coarse = plan_scan(budget, 13)
    assert len(coarse.blocks) == 4 and sorted(np.concatenate(coarse.blocks).tolist()) == list(range(g))
    assert Sensitivity.evaluations(40, g) == 2 + 3 * 12 and Sensitivity.evaluations(10 ** 4, g) == 2 + 3 * g
    with pytest.raises(UserError, match="--trials >= 5"):
        Sensitivity.evaluations(4, g)


def test_allocation_meets_the_budget_and_is_monotone(space):
    budget_for = {t: Budget(space, t) for t in (0.7, 0.6, 0.5, 0.4, 0.3)}
    plan = plan_scan(budget_for[0.5], 1 + 3 * len(space.groups))
    sensitivity = np.random.default_rng(0).gamma(0.5, 0.2, len(space.groups))
    scores = synthetic_scores(plan, sensitivity)
    kept_before = None
    for target, budget in budget_for.items():  # tighter and tighter
        rates = allocate(budget, plan, scores)
        ratio = budget.ratio(rates)[0]
        assert target - 0.02 <= ratio <= target, (target, ratio)  # one rounding step of a 64-channel group: 1.5%
        kept = np.array([space.kept_count(g, r) for g, r in zip(space.groups, rates)])
        if kept_before is not None:
            assert np.all(kept <= kept_before), target
        kept_before = kept
        # the allocation loses less than uniform rates on the same budget (the loss the scan predicts)
        uniform = budget.project(np.zeros((1, len(space.groups))))[0]
        assert sensitivity @ rates ** 2 < sensitivity @ uniform ** 2


def test_a_coarse_scan_lands_on_the_budget_where_a_block_jumps(space):
    """Losses concave in the rate (each group loses sensitivity x sqrt(rate)) make the multiplier move a block
    from a low rate to the maximum at one threshold: only as much of the jump as the budget needs is taken
    (taken whole, it kept up to 14.6 FLOPs points less than the budget)."""
    g = len(space.groups)
    plan = plan_scan(Budget(space, 0.5), 1 + 3 * 6)
    sensitivity = np.random.default_rng(0).gamma(0.5, 0.05, g)
    scores = np.array([0.7 - float(sensitivity @ np.sqrt(p)) for p in plan.points])
    kept_before = None
    for target in np.arange(0.8, 0.29, -0.025):
        budget = Budget(space, float(target))
        rates = allocate(budget, plan, scores)
        # a block of this small model's groups steps by up to 4% of the FLOPs at once (rounding to 8 channels)
        assert target - 0.045 <= budget.ratio(rates)[0] <= target, target
        kept = np.array([space.kept_count(gr, r) for gr, r in zip(space.groups, rates)])
        assert kept_before is None or np.all(kept <= kept_before), target
        kept_before = kept


def test_blocks_that_lose_nothing_do_not_overshoot_the_budget(space):
    """Scan noise often scores a pruned block at or above the unpruned model: such blocks are cut only as far as
    the budget needs, not all to the maximum rate."""
    budget = Budget(space, 0.85)
    plan = plan_scan(budget, 1 + 3 * len(space.groups))
    sensitivity = np.where(np.arange(len(space.groups)) % 2 == 0, 0.0, 0.3)
    rates = allocate(budget, plan, synthetic_scores(plan, sensitivity))
    assert 0.83 <= budget.ratio(rates)[0] <= 0.85


def test_loss_curves_are_monotone_and_zero_at_rate_zero(space):
    plan = plan_scan(Budget(space, 0.5), 13)
    scores = np.concatenate([[0.7], np.random.default_rng(1).uniform(0.3, 0.8, len(plan.points) - 1)])
    grid = np.tile(np.linspace(0, 0.9, 50), (len(plan.blocks), 1))
    curves = loss_curves(plan, scores, grid)
    assert np.all(curves[:, 0] == 0) and np.all(np.diff(curves, axis=1) >= -1e-12) and np.all(curves >= 0)


@pytest.mark.slow
def test_sensitivity_search_scans_allocates_and_resumes_from_its_scan(tmp_path, tiny_weights, tiny_data):
    cmd = search_cmd(tiny_weights, tiny_data.yaml_path, tmp_path, "--strategy", "sensitivity", "--trials", "8",
                     "--name", "s", "--json")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    log = tmp_path / "s" / "trials.jsonl"
    trials = [json.loads(line) for line in log.read_text().splitlines()]
    assert [t["phase"] for t in trials] == ["scan"] * 7 + ["sensitivity"]
    assert trials[0]["flops_ratio"] == 1.0 and trials[-1]["flops_ratio"] <= 0.6
    assert summary["best"]["trial"] == 7 and summary["trials"] == 8
    scan = json.loads((tmp_path / "s" / "sensitivity.json").read_text())
    assert len(scan["blocks"]) == 2 and len(scan["blocks"][0]["scores"]) == 3

    log.write_text("\n".join(log.read_text().splitlines()[:4]) + "\n")  # a run killed during its scan
    again = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = [json.loads(line) for line in log.read_text().splitlines()]
    assert [t["trial"] for t in resumed] == list(range(8))
    assert resumed[:4] == trials[:4] and resumed[-1]["rates"] == trials[-1]["rates"]


@pytest.mark.slow
def test_warm_hdbo_keeps_results_on_budget(tmp_path, tiny_weights, tiny_data):
    out = subprocess.run(search_cmd(tiny_weights, tiny_data.yaml_path, tmp_path, "--strategy", "hdbo-warm",
                                    "--trials", "8", "--json"), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    trials = [json.loads(line) for line in (tmp_path / "exp" / "trials.jsonl").read_text().splitlines()]
    phases = [t["phase"] for t in trials]
    # the unpruned model and two blocks at half the maximum rate, the uniform point, the allocation, then BO
    assert phases == ["scan"] * 3 + ["init"] + ["hdbo-warm"] * 4
    assert all(t["flops_ratio"] <= 0.6 + 1e-9 for t in trials if t["phase"] != "scan")
    assert summary["best"]["flops_ratio"] <= 0.6 + 1e-9 and summary["best"]["trial"] >= 2


def test_a_per_group_criterion_ranks_each_group_by_its_own(space):
    from yoloprune.structure.importance import unit_scores
    from yoloprune.structure.pruner import removed_units

    choice = {g.name: ("l1", "fpgm", "bn")[i % 3] for i, g in enumerate(space.groups)}
    mixed = removed_units(space, {g.name: 0.5 for g in space.groups}, choice)
    for g in space.groups:
        alone = removed_units(space, {g.name: 0.5}, choice[g.name])
        units = {int(r) for part in g.parts for r in part}
        assert mixed & units == alone & units, g.name
    assert set(unit_scores(space, choice)) == {int(r) for g in space.groups for part in g.parts for r in part}


@pytest.mark.slow
def test_criterion_auto_records_a_criterion_per_group_and_the_model_reloads(tmp_path, tiny_weights, tiny_data):
    from yoloprune.structure.importance import CRITERIA

    out = subprocess.run(search_cmd(tiny_weights, tiny_data.yaml_path, tmp_path, "--criterion", "auto", "--trials",
                                    "3", "--json"), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    chosen = json.loads((tmp_path / "exp" / "criteria.json").read_text())
    groups = json.loads((tmp_path / "exp" / "meta.json").read_text())["groups"]
    assert set(chosen) == set(groups) and set(chosen.values()) <= set(CRITERIA)
    assert summary["criterion"] == chosen
    layers = subprocess.run([sys.executable, "-m", "yoloprune", "layers", "--weights", str(tiny_weights),
                             "--criterion", "auto", "--data", str(tiny_data.yaml_path), "--json"],
                            capture_output=True, text=True, timeout=600)
    assert layers.returncode == 0, layers.stderr[-2000:]
    assert {g["name"]: g["criterion"] for g in json.loads(layers.stdout)["groups"]} == chosen  # same probe images
    reload = subprocess.run([sys.executable, "-c", "import sys; from ultralytics import YOLO; "
                             "m = YOLO(sys.argv[1]); print(sum(p.numel() for p in m.model.parameters()))",
                             summary["pruned"]], capture_output=True, text=True, timeout=300)
    assert reload.returncode == 0 and int(reload.stdout.split()[-1]) == summary["best"]["params"], reload.stderr


def test_layers_criterion_auto_needs_data(tiny_weights):
    out = subprocess.run([sys.executable, "-m", "yoloprune", "layers", "--weights", str(tiny_weights),
                          "--criterion", "auto"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "--data" in out.stderr


def test_auto_scans_when_the_trials_afford_twelve_blocks_of_a_flops_budget():
    assert auto_strategy(38, 50, flops_only=True) == "sensitivity"  # 1 + 12 x 3 + the allocation
    assert auto_strategy(37, 50, flops_only=True) == auto_strategy(12, 50, flops_only=True) == "hdbo"
    assert auto_strategy(152, 50, flops_only=False) == "hdbo"  # a latency budget: the scan was not measured there
    assert auto_strategy(17, 5, flops_only=True) == "sensitivity"  # fewer groups than 12: every group alone


def test_auto_resumes_with_the_strategy_the_run_started_with(tmp_path, tiny_weights, tiny_data):
    from yoloprune.search.config import SearchConfig
    from yoloprune.search.loop import resolve_strategy
    from yoloprune.search.store import RunStore

    store = RunStore(tmp_path / "exp")
    cfg = SearchConfig(str(tiny_weights), str(tiny_data.yaml_path), 0.5, trials=60)
    assert resolve_strategy(cfg, store, 40) == "sensitivity"
    store.write_json("meta.json", {"strategy": "hdbo"})  # started before auto was the default
    assert resolve_strategy(replace(cfg, resume=True), store, 40) == "hdbo"
