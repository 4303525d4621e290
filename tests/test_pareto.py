"""The front search (`search --pareto`) and `pick`: front maths, EHVI, level projection, end to end with resume."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from prune_helpers import cli_here
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel

from yoloprune.errors import UserError
from yoloprune.search.budget import Budget
from yoloprune.search.pareto import front_summary, hypervolume, log_ehvi, non_dominated, steps
from yoloprune.search.pick import fastest_within
from yoloprune.structure.groups import analyse


@pytest.fixture(scope="module")
def space():
    return analyse(DetectionModel("yolov8n.yaml", nc=10, verbose=False).eval(), imgsz=96)


def test_front_is_the_non_dominated_set_and_its_hypervolume_the_dominated_area():
    rng = np.random.default_rng(0)
    costs, values = rng.random(60), rng.random(60)
    front = non_dominated(costs, values)
    beaten = [any(costs[j] <= costs[i] and values[j] >= values[i] and (costs[j], values[j]) != (costs[i], values[i])
                  for j in range(60)) for i in range(60)]
    assert sorted(front) == [i for i in range(60) if not beaten[i]]
    assert list(costs[front]) == sorted(costs[front]) and list(values[front]) == sorted(values[front])
    grid = np.stack(np.meshgrid(np.linspace(0, 1, 400), np.linspace(0, 1, 400)), -1).reshape(-1, 2)
    covered = ((grid[:, None, 0] >= costs[None]) & (grid[:, None, 1] <= values[None])).any(1)
    assert hypervolume(costs, values, ref_cost=1.0) == pytest.approx(covered.mean(), abs=0.01)


def test_ehvi_equals_the_expected_hypervolume_gain_of_a_sampled_point():
    from botorch.models import SingleTaskGP

    torch.manual_seed(0)
    x = torch.rand(12, 3, dtype=torch.double)
    model = SingleTaskGP(x, (x.sum(1, keepdim=True) / 3).pow(2)).eval()
    costs, values = np.array([0.2, 0.5, 0.8]), np.array([0.05, 0.2, 0.5])
    cand, cand_costs, trend = torch.rand(5, 3, dtype=torch.double), np.array([0.1, 0.3, 0.55, 0.7, 0.95]), 0.02
    edges, levels = steps(costs, values, ref_cost=1.0, ref_value=0.1)
    ehvi = log_ehvi(model, cand, cand_costs, np.full(5, trend), edges, levels).exp().numpy()
    with torch.no_grad():
        post = model.posterior(cand)
        samples = trend + (post.mean[:, 0] + post.variance[:, 0].sqrt() * torch.randn(40000, 5)).numpy()
    base = hypervolume(costs, values, 1.0, ref_value=0.1)
    for i in range(5):
        gains = [hypervolume(np.append(costs, cand_costs[i]), np.append(values, y), 1.0, 0.1) - base
                 for y in samples[:4000, i]]
        assert ehvi[i] == pytest.approx(np.mean(gains), rel=0.05, abs=2e-4)


def test_projection_onto_levels_lands_each_row_just_under_its_own(space):
    budget = Budget(space, None, front="flops")
    lo, hi = budget.cost_range()
    assert hi == pytest.approx(1.0) and 0 < lo < 0.3
    levels = np.linspace(0.35, 0.9, 12)
    rates = budget.project(np.random.default_rng(1).random((12, len(space.groups))) * 0.9, levels=levels)
    got = budget.cost(rates)
    assert np.all(got <= levels + 1e-9) and np.all(got > levels - 0.06)
    with pytest.raises(UserError, match="give --target-flops"):
        Budget(space, None)


def test_pick_by_latency_bisects_the_front_and_names_the_fastest_when_nothing_fits():
    points = [{"trial": i, "score": i / 10, "flops_ratio": 0.2 + i / 20} for i in range(10)]
    measured = []

    def ms(p):  # latency grows along the front
        measured.append(p["trial"])
        return 5.0 + p["trial"]

    best, got = fastest_within(points, 10.5, ms)
    assert best["trial"] == 5 and got == 10.0 and len(measured) <= 4
    with pytest.raises(UserError, match=r"fastest measured, trial 0 .* 5.00 ms"):
        fastest_within(points, 4.0, ms)


def front_cmd(weights, data, project, *extra):
    return [sys.executable, "-m", "yoloprune", "search", "--weights", str(weights), "--data", str(data), "--pareto",
            "flops", "--trials", "9", "--val-images", "16", "--calib-images", "16", "--project", str(project), *extra]


def pick_cmd(run, out, *extra):
    return [sys.executable, "-m", "yoloprune", "pick", "--run", str(run), "--out", str(out), "--json", *extra]


@pytest.mark.slow
def test_front_search_resumes_identically_and_pick_saves_the_best_point_within_the_limit(tmp_path,
                                                                                        default_problem):
    weights, data = default_problem
    cmd = front_cmd(weights, data.yaml_path, tmp_path, "--name", "f", "--json")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    log = tmp_path / "f" / "trials.jsonl"
    trials = [json.loads(line) for line in log.read_text().splitlines()]
    assert [t["phase"] for t in trials[:2]] == ["uniform", "uniform"] and trials[-1]["phase"] == "pareto"
    log.write_text("\n".join(log.read_text().splitlines()[:5]) + "\n")  # a run killed after 5 trials
    meta = json.loads((tmp_path / "f" / "meta.json").read_text())
    assert meta["strategy"] == "hdbo"
    (tmp_path / "f" / "meta.json").write_text(json.dumps({**meta, "strategy": "auto"}))  # as runs before the scan front
    again = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = [json.loads(line) for line in log.read_text().splitlines()]
    assert [t["trial"] for t in resumed] == list(range(9))
    assert [t["rates"] for t in resumed] == [t["rates"] for t in trials], "a resumed front search proposes the same"
    front = json.loads((tmp_path / "f" / "front.json").read_text())
    points = front["points"]
    assert [p["trial"] for p in points] == sorted((p["trial"] for p in points), key=lambda t: resumed[t]["flops_ratio"])
    for p in points:  # nothing beats a front point
        assert not any(t["flops_ratio"] <= p["flops_ratio"] and t["score"] > p["score"] for t in resumed)
    assert len(front["uniform"]) == 2 and front["hypervolume"] > 0
    for name in ("front.png", "report.html", "summary.json"):
        assert (tmp_path / "f" / name).exists(), name

    limit = float(np.median([p["flops_ratio"] for p in points]))
    picked = subprocess.run(pick_cmd(tmp_path / "f", tmp_path / "m.pt", "--target-flops", str(limit)),
                            capture_output=True, text=True, timeout=600)
    assert picked.returncode == 0, picked.stderr[-2000:]
    r = json.loads(picked.stdout)
    best = max((p for p in points if p["flops_ratio"] <= limit), key=lambda p: p["score"])
    assert r["trial"] == best["trial"] and r["flops_ratio"] == pytest.approx(best["flops_ratio"])
    assert r["flops_ratio"] <= limit and r["final_check_map50_95"] > 0
    YOLO(str(tmp_path / "m.pt"))  # a stock checkpoint

    low = min(p["flops_ratio"] for p in points)
    refused = subprocess.run(pick_cmd(tmp_path / "f", tmp_path / "x.pt", "--target-flops", f"{low / 2:.4f}"),
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "cheapest" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()


def test_front_bad_input_is_one_line_and_exit_2(tmp_path, tiny_weights, tiny_data):
    run = tmp_path / "single"
    run.mkdir()
    (run / "meta.json").write_text("{}")
    for cmd, message in [
        (front_cmd(tiny_weights, tiny_data.yaml_path, tmp_path, "--stages", "2"), "--pareto cannot go with --stages"),
        (front_cmd(tiny_weights, tiny_data.yaml_path, tmp_path, "--strategy", "random"), "--strategy"),
        (front_cmd(tiny_weights, tiny_data.yaml_path, tmp_path, "--strategy", "sensitivity"), "--trials >= 10"),
        (front_cmd(tiny_weights, tiny_data.yaml_path, tmp_path, "--finetune-epochs", "2"), "--finetune-epochs"),
        (pick_cmd(run, tmp_path / "m.pt", "--target-flops", "0.5"), "holds no front"),
        (pick_cmd(tmp_path / "nothing", tmp_path / "m.pt", "--target-flops", "0.5"), "no search run"),
        (pick_cmd(run, tmp_path / "m.pt", "--target-flops", "0.5", "--min-speedup", "2"), "not allowed with"),
        (pick_cmd(run, tmp_path / "m.pt", "--target-flops", "0.5", "--device", "7"), "--device 7"),
        (pick_cmd(run, tmp_path / "m.pt", "--target-flops", "1.5"), "(0, 1]"),
    ]:
        r = cli_here(*cmd[3:])
        assert r.returncode == 2 and message in r.stderr, (cmd, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not any(tmp_path.glob("exp*")) and not (tmp_path / "m.pt").exists()


def test_the_first_bayesian_trial_waits_for_two_results_when_workers_outnumber_the_initial_points(space):
    from yoloprune.search.pareto import ParetoHDBO
    from yoloprune.search.strategies import SearchContext

    strategy = ParetoHDBO(SearchContext(space, Budget(space, None, front="flops"), {}, seed=0, trials=10))
    n = strategy.n_init
    assert strategy.ready(n - 1, in_flight=n - 1), "initial points go out at once"
    assert not strategy.ready(n, in_flight=n) and not strategy.ready(n, in_flight=n - 1)
    assert strategy.ready(n, in_flight=n - 2)



def scan_front_run(space, trials: int, seed: int, target_flops=None, budget=None):
    """Every proposal of a scan front fed a smooth synthetic score (a loss per group, quadratic in its rate)."""
    from yoloprune.search.pareto import ScanFront
    from yoloprune.search.strategies import SearchContext

    weight = np.random.default_rng(0).random(len(space.groups))
    budget = budget or Budget(space, target_flops, front="flops")
    strategy = ScanFront(SearchContext(space, budget, {}, seed, trials))
    rates, phases = np.zeros((0, len(space.groups))), []
    for t in range(trials):
        r, phase = strategy.propose(rates, 1.0 - (weight * rates ** 2).sum(1) / len(weight), t)
        rates, phases = np.vstack([rates, r]), phases + [phase]
    return strategy, rates, np.array(phases)


def test_a_scan_front_scans_then_allocates_at_rising_levels_each_on_its_own(space):
    strategy, rates, phases = scan_front_run(space, trials=30, seed=0)
    n_scan = len(strategy.plan.points)
    assert (phases[:n_scan] == "scan").all() and (phases[n_scan:n_scan + 2] == "uniform").all()
    alloc = phases == "sensitivity"
    assert alloc.sum() == 30 - n_scan - 2 == len(strategy.levels) >= 4
    costs = space.flops_ratio(rates[alloc])
    lo, hi = Budget(space, None, front="flops").cost_range()
    assert lo < strategy.levels[0] and strategy.levels[-1] < hi, "unbounded: the unpruned top is the scan's own"
    assert (costs <= strategy.levels + 1e-9).all() and (costs > strategy.levels - 0.05).all()
    assert (np.diff(rates[alloc], axis=0) <= 1e-9).all(), "a higher level never keeps fewer channels of a group"
    again = scan_front_run(space, trials=30, seed=7)[1]
    assert np.array_equal(rates, again), "the scan front is deterministic: the seed changes nothing"

    bounded, rates, phases = scan_front_run(space, trials=30, seed=0, target_flops=0.6)
    budget = Budget(space, 0.6, front="flops")
    assert bounded.levels[-1] == pytest.approx(budget.cost_range()[1])
    assert (space.flops_ratio(rates[phases != "scan"]) <= 0.6).all()
    trials = [{"trial": t, "phase": p, "rates": dict(zip(space.names, r)), "score": 1.0 - r.mean(),
               "map50_95": 1.0 - r.mean(), "map50": 1.0, "flops_ratio": float(space.flops_ratio(r[None])[0])}
              for t, (p, r) in enumerate(zip(phases, rates))]
    points = front_summary(trials, budget, space)["points"]
    assert points and all(p["flops_ratio"] <= 0.6 for p in points), "the scan's probes above the bound are no points"


def test_a_scan_front_on_latency_allocates_onto_each_ms_level(space):
    from yoloprune.latency.model import LatencyModel

    levels = sorted(set(space.conv_area.tolist()))  # ms = 0.5 + 3 x GFLOPs + 0.2 x output volume (M), per level
    latency = LatencyModel({"threads": 1}, levels, [0.5] + [3.0, 0.2] * len(levels), 0.05, {})
    budget = Budget(space, None, latency=latency, front="latency")
    strategy, rates, phases = scan_front_run(space, trials=30, seed=0, budget=budget)
    alloc = phases == "sensitivity"
    ms = latency.predict(space, rates[alloc])
    assert (ms <= strategy.levels + 1e-9).all() and (ms > strategy.levels - 0.05 * np.ptp(budget.cost_range())).all()
    assert (np.diff(rates[alloc], axis=0) <= 1e-9).all()


def test_a_latency_pick_places_the_scan_allocation_at_the_measured_limit_and_steps_down_once_if_over(
        space, tmp_path):
    from dataclasses import asdict

    from yoloprune.latency.model import LatencyModel
    from yoloprune.search.pick import allocation_within
    from yoloprune.search.store import RunStore

    levels = sorted(set(space.conv_area.tolist()))
    latency = LatencyModel({"threads": 1}, levels, [0.5] + [3.0, 0.2] * len(levels), 0.05, {})
    strategy, rates, phases = scan_front_run(space, trials=30, seed=0,
                                             budget=Budget(space, None, latency=latency, front="latency"))
    store = RunStore(tmp_path)
    for t, (r, p) in enumerate(zip(rates, phases)):  # the scores scan_front_run fed the search
        score = float(1.0 - (np.random.default_rng(0).random(len(r)) * r ** 2).sum() / len(r))
        store.append_trial({"trial": t, "phase": str(p), "rates": dict(zip(space.names, map(float, r))),
                            "score": score})
    store.write_json("latency_model.json", asdict(latency))
    unpruned = float(latency.predict(space, np.zeros((1, len(space.groups))))[0])
    meta = {"strategy": "sensitivity", "pareto": "latency", "target_flops": None, "seed": 0, "trials": 30,
            "unpruned_latency_ms": unpruned}

    class Timer:  # this machine runs 2x slower than the search's, and the model under-estimates by `bias`
        unpruned_ms = 2 * unpruned

        def __init__(self, bias):
            self.bias, self.calls = bias, []

        def measure(self, r):
            self.calls.append(float(latency.predict(space, r[None])[0]))
            return 2 * self.calls[-1] * self.bias

    limit = 0.6 * Timer.unpruned_ms
    exact = Timer(1.0)
    found, ms = allocation_within(limit, exact, store, meta, space)
    assert len(exact.calls) == 1 and 0.9 * limit < ms <= limit, "placed at the limit in the run's unit of ms"
    over = Timer(1.05)
    found, ms = allocation_within(limit, over, store, meta, space)
    assert len(over.calls) == 2 and ms <= limit and over.calls[1] < over.calls[0], "one step lower after an overshoot"
    assert allocation_within(limit, Timer(1.5), store, meta, space) is None, "two overshoots: the front point stands"

    trials = store.trials()  # the search measured its front points 5% above the model: the pick's estimate follows
    for t in trials[-4:]:
        t["latency_ms_measured"] = 1.05 * float(latency.predict(space, space.rates_vector(t["rates"])[None])[0])
    store.write_text("trials.jsonl", "".join(json.dumps(t) + "\n" for t in trials))
    calibrated = Timer(1.05)
    found, ms = allocation_within(limit, calibrated, store, meta, space)
    assert len(calibrated.calls) == 1 and 0.9 * limit < ms <= limit


def test_auto_runs_a_scan_front_when_the_trials_afford_twelve_blocks():
    from yoloprune.search.pareto import ScanFront, auto_front_strategy

    assert ScanFront.scan_blocks(53, 50) == 12 and auto_front_strategy(53, 50) == "sensitivity"
    assert auto_front_strategy(52, 50) == "hdbo"
    assert auto_front_strategy(23, 5) == "sensitivity", "fewer groups than 12: a scan of every group alone"
    with pytest.raises(UserError, match="--trials >= 10"):
        ScanFront.evaluations(9, 50)


@pytest.mark.slow
def test_a_scan_front_resumes_and_pick_takes_the_better_of_its_point_and_the_allocation_at_the_limit(
        tmp_path, default_problem):
    weights, data = default_problem
    cmd = front_cmd(weights, data.yaml_path, tmp_path, "--name", "s", "--json", "--strategy", "sensitivity",
                    "--trials", "10")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["strategy"] == "sensitivity" and (tmp_path / "s" / "sensitivity.json").exists()
    log = tmp_path / "s" / "trials.jsonl"
    trials = [json.loads(line) for line in log.read_text().splitlines()]
    assert [t["phase"] for t in trials] == ["scan"] * 4 + ["uniform"] * 2 + ["sensitivity"] * 4
    log.write_text("\n".join(log.read_text().splitlines()[:6]) + "\n")  # killed before its allocations
    again = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert [json.loads(line)["rates"] for line in log.read_text().splitlines()] == [t["rates"] for t in trials]

    limit = 0.5
    picked = subprocess.run(pick_cmd(tmp_path / "s", tmp_path / "m.pt", "--target-flops", str(limit)),
                            capture_output=True, text=True, timeout=600)
    assert picked.returncode == 0, picked.stderr[-2000:]
    r = json.loads(picked.stdout)
    best = max((t for t in trials if t["flops_ratio"] <= limit), key=lambda t: t["score"])
    assert r["flops_ratio"] <= limit and r["search_map50_95"] >= best["map50_95"]
    assert (r["trial"] is None) == (r["search_map50_95"] > best["map50_95"]), "a trial unless the allocation beat it"
    assert "the scan's allocation (at 50.0% of the FLOPs)" in picked.stderr
    YOLO(str(tmp_path / "m.pt"))
