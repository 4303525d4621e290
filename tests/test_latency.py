"""The latency model: features, fit, budget projection under a latency limit, and the measured final check."""

import json

import numpy as np
import pytest
from ultralytics.nn.tasks import DetectionModel

from yoloprune import api
from yoloprune.errors import UserError
from yoloprune.latency import model as latency
from yoloprune.latency.model import PairedTimer, calibrated, features, fit, latency_model, sample_rates
from yoloprune.search.budget import Budget
from yoloprune.structure.groups import analyse


@pytest.fixture(scope="module")
def space():
    return analyse(DetectionModel("yolov8n.yaml", nc=10, verbose=False).eval(), imgsz=96)


@pytest.fixture(scope="module")
def linear_model(space):
    """A latency model fitted to latencies that are exactly linear in the features."""
    rates = sample_rates(space, 30, seed=1)
    levels = sorted({float(a) for a in space.conv_area}, reverse=True)
    true = np.linspace(0.5, 2.0, 1 + 2 * len(levels))
    return fit(space, rates, features(space, rates, levels) @ true, {"threads": 1}, held_out=10)


def test_features_follow_flops(space):
    rates = sample_rates(space, 8)
    levels = sorted({float(a) for a in space.conv_area}, reverse=True)
    x = features(space, rates, levels)
    assert len(levels) >= 4, "a YOLOv8 has convs at strides 2, 4, 8, 16 and 32"
    np.testing.assert_allclose(x[:, 1::2].sum(1) * 1e9, space.flops(rates) - space.other_flops, rtol=1e-9)
    assert np.all(np.diff(x[:, 1::2].sum(1)[np.argsort(space.flops(rates))]) >= 0)


def test_fit_recovers_a_linear_latency_and_reports_held_out_error(linear_model, space):
    assert linear_model.held_out["models"] == 10
    assert linear_model.held_out["median_rel_error"] < 1e-6
    assert linear_model.margin == pytest.approx(0.02), "the margin never drops below MIN_MARGIN"
    assert linear_model.held_out["p90_rel_error"] < 1e-6
    deeper = linear_model.predict(space, np.full((1, len(space.groups)), 0.5))
    assert deeper[0] < linear_model.predict(space, np.zeros((1, len(space.groups))))[0]


def test_projection_lands_just_under_a_latency_limit(linear_model, space):
    full = float(linear_model.predict(space, np.zeros((1, len(space.groups))))[0])
    limit = 0.7 * full
    budget = Budget(space, None, latency=linear_model, max_latency_ms=limit)
    projected = budget.project(np.random.default_rng(0).random((32, len(space.groups))) * 0.9)
    est = linear_model.predict(space, projected) * (1 + linear_model.margin)
    assert np.all(est <= limit + 1e-9)
    assert np.median(est) > 0.9 * limit, "projection should land near the limit, not far inside it"
    both = Budget(space, 0.5, latency=linear_model, max_latency_ms=limit)
    p = both.project(np.zeros((4, len(space.groups))))
    assert np.all(both.ratio(p) <= 0.5 + 1e-12) and np.all(both.feasible(p))
    with pytest.raises(UserError, match="impossible"):
        Budget(space, None, latency=linear_model, max_latency_ms=1e-6)
    with pytest.raises(UserError, match="--target-flops, --max-latency-ms"):
        Budget(space, None)


def test_calibration_rescales_the_fit_to_measured_candidates(linear_model, space):
    rng = np.random.default_rng(3)
    rates = sample_rates(space, 6, seed=2)
    measured = 1.1 * linear_model.predict(space, rates) * (1 + rng.uniform(-0.004, 0.004, 6))
    two = calibrated(linear_model, space, rates[:2], measured[:2])
    assert two.scale == pytest.approx(1.1, rel=0.01) and two.margin == linear_model.margin, "too few for a spread"
    six = calibrated(two, space, rates, measured)  # rescales the fit itself, not the already calibrated model
    assert six.scale == pytest.approx(1.1, rel=0.01) and six.coef == linear_model.coef
    assert six.margin == pytest.approx(latency.MIN_LOCAL_MARGIN), "measured neighbours agree within the noise floor"
    np.testing.assert_allclose(six.predict(space, rates), 1.1 * linear_model.predict(space, rates), rtol=0.01)
    spread = calibrated(linear_model, space, rates, measured * np.array([1, 1, 1, 1, 1.08, 0.95]))
    assert spread.margin > 0.04, "scattered measurements widen the margin"
    limit = float(linear_model.predict(space, np.zeros((1, len(space.groups))))[0]) * 0.7
    before = Budget(space, None, latency=linear_model, max_latency_ms=limit).project(np.zeros((1, len(space.groups))))
    after = Budget(space, None, latency=six, max_latency_ms=limit).project(np.zeros((1, len(space.groups))))
    assert space.flops_ratio(after)[0] < space.flops_ratio(before)[0], "a slower machine than the fit: prune deeper"


class FakeSession:
    """An ONNX Runtime session whose run advances a fake clock by its cost times the machine's slowness."""

    clock = [0.0]
    slowness = [1.0]

    def __init__(self, cost_ms):
        self.cost_ms = cost_ms

    def get_inputs(self):
        return [type("Input", (), {"name": "images"})]

    def run(self, outputs, feeds):
        self.clock[0] += self.cost_ms * self.slowness[0] / 1e3


def test_paired_timer_cancels_machine_drift(monkeypatch, space):
    costs = {"unpruned": 10.0, "c": 6.0}
    monkeypatch.setattr(latency, "export_rates", lambda loaded, space, row, out_dir, label: label)
    monkeypatch.setattr("yoloprune.latency.bench.session", lambda path, threads: FakeSession(costs[path]))
    monkeypatch.setattr("yoloprune.latency.bench.time.perf_counter", lambda: FakeSession.clock[0])
    FakeSession.slowness[0] = 1.0
    timer = PairedTimer(None, space, threads=1, runs=5, warmup=1)
    try:
        assert timer.unpruned_ms == pytest.approx(10.0)
        FakeSession.slowness[0] = 1.5  # the machine slows down after the search started
        assert timer.measure(np.zeros(len(space.groups))) == pytest.approx(6.0), "in the start's ms, drift removed"
    finally:
        timer.close()
    assert not timer.tmp.exists()


def test_cached_fit_is_refitted_when_the_machine_speed_changed(tmp_path, monkeypatch, space):
    levels = sorted({float(a) for a in space.conv_area}, reverse=True)
    true = np.linspace(0.5, 2.0, 1 + 2 * len(levels))
    unpruned = np.zeros((1, len(space.groups)))

    class LinearMachineTimer:  # a machine whose latency is linear in the features, at a given speed
        threads = 1

        def __init__(self, speed):
            self.space, self.speed = space, speed
            self.unpruned_ms = self.measured_unpruned_ms = self.measure(unpruned[0])

        def measure(self, row):
            return float(features(space, row[None], levels)[0] @ true / self.speed)

    monkeypatch.setenv("YOLOPRUNE_CACHE", str(tmp_path))
    first = latency_model(LinearMachineTimer(1.0), "sha", models=30)
    assert latency_model(LinearMachineTimer(1.0), "sha", models=30).coef == first.coef, "same speed: the cached fit"
    assert latency_model(LinearMachineTimer(1.05), "sha", models=30).coef == first.coef, "within the drift allowance"
    said = []
    slower = latency_model(LinearMachineTimer(1 / 1.4), "sha", models=30, log=said.append)
    assert slower.predict(space, unpruned)[0] == pytest.approx(1.4 * first.predict(space, unpruned)[0], rel=1e-3)
    assert any("speed has changed" in m for m in said)
    again = latency_model(LinearMachineTimer(1 / 1.4), "sha", models=30)
    assert again.coef == slower.coef, "the refit replaced the cache"


class FakeMachine:
    """Candidates "exported" and "timed" without ONNX: latency is a fixed, slightly nonlinear function of the kept
    FLOPs (so the linear latency model is imperfect), times the machine's slowness, which cancels in pairs."""

    def __init__(self, monkeypatch):
        self.slowness = 1.0
        monkeypatch.setattr(latency, "export_rates", lambda loaded, space, row, out_dir, label: self.ms(space, row))
        monkeypatch.setattr("yoloprune.latency.bench.session", lambda cost, threads: cost)
        monkeypatch.setattr("yoloprune.latency.bench.alternate", lambda sessions, x, runs, warmup: np.array(
            [[cost * self.slowness] * runs for cost in sessions]))

    @staticmethod
    def ms(space, row) -> float:
        f = float(space.flops_ratio(np.asarray(row)[None])[0])
        return 2.0 + 6.0 * f + 4.0 * f ** 2


@pytest.fixture()
def fake_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("YOLOPRUNE_CACHE", str(tmp_path / "cache"))
    return FakeMachine(monkeypatch)


UNPRUNED_MS = 12.0  # FakeMachine.ms at all FLOPs kept: 2 + 6 + 4 (an untrained model: no detections needed)


def test_latency_search_saves_a_model_that_measures_within_the_budget(tmp_path, tiny_data, fake_machine, tiny_weights):
    from yoloprune.search.config import SearchConfig
    from yoloprune.search.loop import run_search

    weights, limit = tiny_weights, 0.75 * UNPRUNED_MS
    cfg = SearchConfig(str(weights), str(tiny_data.yaml_path), max_latency_ms=limit, latency_models=21, trials=4,
                       val_images=6, calib_images=8, project=str(tmp_path / "runs"))
    summary = run_search(cfg)
    space = api.analyse(api.load(weights))
    saved = FakeMachine.ms(space, space.rates_vector(summary["best"]["rates"]))
    assert summary["unpruned_latency_ms"] == pytest.approx(UNPRUNED_MS)
    assert summary["measured_latency_ms"] == pytest.approx(saved) and saved <= limit
    assert saved > 0.75 * limit, "the budget binds: the saved model uses most of it"
    trials = [json.loads(line) for line in (tmp_path / "runs" / "exp" / "trials.jsonl").read_text().splitlines()]
    assert trials[0]["latency_ms_measured"] == pytest.approx(FakeMachine.ms(space, space.rates_vector(
        trials[0]["rates"]))), "the first trials are measured and calibrate the estimate"


def test_latency_budget_that_does_not_bind_is_refused_before_any_fit(tmp_path, tiny_data, fake_machine, tiny_weights):
    from yoloprune.search.config import SearchConfig
    from yoloprune.search.loop import run_search

    weights = tiny_weights
    for budget in ({"max_latency_ms": 12.5}, {"max_latency_ms": 12.0}, {"min_speedup": 1.01}):
        cfg = SearchConfig(str(weights), str(tiny_data.yaml_path), trials=3, val_images=6, calib_images=8,
                           project=str(tmp_path / "runs"), **budget)
        with pytest.raises(UserError, match="does not bind"):
            run_search(cfg)
    bad = {"min_speedup": (1.0, "--min-speedup"), "latency_threads": (0, "--latency-threads"),
           "latency_models": (5, "too few")}
    for field, (value, message) in bad.items():
        cfg = SearchConfig(str(weights), str(tiny_data.yaml_path), trials=3, val_images=6, calib_images=8,
                           project=str(tmp_path / "runs"), **{"min_speedup": 1.3, field: value})
        with pytest.raises(UserError, match=message):
            run_search(cfg)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache" / "latency").exists()


def test_resumed_latency_search_keeps_its_first_runs_unit(tmp_path, tiny_data, fake_machine, tiny_weights):
    from yoloprune.search.config import SearchConfig
    from yoloprune.search.loop import run_search

    weights = tiny_weights
    cfg = SearchConfig(str(weights), str(tiny_data.yaml_path), min_speedup=1.3, latency_models=21, trials=5,
                       val_images=6, calib_images=8, project=str(tmp_path / "runs"), name="run")

    def killed(trial, best, total):
        if trial["trial"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, on_trial=killed)
    fake_machine.slowness = 1.5  # the machine runs slower on the day the run is resumed
    summary = run_search(SearchConfig(**{**cfg.__dict__, "resume": True}))
    assert summary["unpruned_latency_ms"] == pytest.approx(UNPRUNED_MS), "the first run's reference, not 18 ms"
    assert summary["max_latency_ms"] == pytest.approx(UNPRUNED_MS / 1.3)
    space = api.analyse(api.load(weights))
    for line in (tmp_path / "runs" / "run" / "trials.jsonl").read_text().splitlines():
        t = json.loads(line)
        if t.get("latency_ms_measured") is not None:
            assert t["latency_ms_measured"] == pytest.approx(FakeMachine.ms(space, space.rates_vector(t["rates"])))
    assert summary["measured_latency_ms"] <= summary["max_latency_ms"]


def test_latency_front_search_and_pick_within_a_measured_limit(tmp_path, tiny_data, fake_machine, tiny_weights):
    from yoloprune.search.config import SearchConfig
    from yoloprune.search.loop import run_search
    from yoloprune.search.pick import pick

    cfg = SearchConfig(str(tiny_weights), str(tiny_data.yaml_path), pareto="latency", latency_models=21, trials=8,
                       val_images=6, calib_images=8, project=str(tmp_path / "runs"), name="front")
    summary = run_search(cfg)
    front = json.loads((tmp_path / "runs" / "front" / "front.json").read_text())
    trials = [json.loads(line) for line in (tmp_path / "runs" / "front" / "trials.jsonl").read_text().splitlines()]
    assert front["front"] == "latency" and front["cost_unit"].startswith("ms") and summary["trials"] == 8
    assert all(p["cost"] == p["latency_ms_est"] for p in front["points"])
    ests = [t["latency_ms_est"] for t in trials]
    assert max(ests) - min(ests) > 0.3 * UNPRUNED_MS, "the trials spread over the latency range"
    assert sum(t.get("latency_ms_measured") is not None for t in trials) >= 3, "the first trials calibrate"
    limit = max(p["latency_ms_est"] for p in front["points"]) * 1.5
    r = pick(tmp_path / "runs" / "front", tmp_path / "m.pt", max_latency_ms=limit)
    space = api.analyse(api.load(tiny_weights))
    assert r["measured_latency_ms"] == pytest.approx(FakeMachine.ms(space, space.rates_vector(r["rates"])))
    assert r["measured_latency_ms"] <= limit and (tmp_path / "m.pt").exists()
    with pytest.raises(UserError, match="no front point measured within"):
        pick(tmp_path / "runs" / "front", tmp_path / "x.pt", max_latency_ms=0.1)
    assert not (tmp_path / "x.pt").exists()



def test_a_scan_latency_front_pick_measures_the_allocation_at_the_limit(tmp_path, tiny_data, fake_machine,
                                                                         tiny_weights):
    from yoloprune.search.config import SearchConfig
    from yoloprune.search.loop import run_search
    from yoloprune.search.pick import pick

    cfg = SearchConfig(str(tiny_weights), str(tiny_data.yaml_path), pareto="latency", strategy="sensitivity",
                       trials=10, latency_models=21, val_images=6, calib_images=8, project=str(tmp_path), name="scan")
    assert run_search(cfg)["strategy"] == "sensitivity"
    space = api.analyse(api.load(tiny_weights))
    limit = 0.8 * UNPRUNED_MS  # above the front's one point (all score 0: the cheapest dominates)
    logged = []
    r = pick(tmp_path / "scan", tmp_path / "m.pt", max_latency_ms=limit, log=logged.append)
    assert any(line.startswith("the scan's allocation placed at") for line in logged), logged
    assert r["measured_latency_ms"] == pytest.approx(FakeMachine.ms(space, space.rates_vector(r["rates"])))
    assert r["measured_latency_ms"] <= limit and (tmp_path / "m.pt").exists()
    assert r["trial"] is not None, "an untrained model scores 0 everywhere: the allocation never beats a front point"
