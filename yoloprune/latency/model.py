"""Latency model for the search: ONNX Runtime latency of a pruned model, estimated from its channel counts.

Fitted once per model, machine, ORT thread count, image size and round-to, on whole pruned
models of the user's model, each exported by Ultralytics and timed in ONNX Runtime run for run
against the unpruned model (`PairedTimer`: drift during the fit cancels), and cached
under ~/.cache/yoloprune/latency/ ($YOLOPRUNE_CACHE moves it); every use first measures the
unpruned model and fits again when the machine's speed has moved. A fit over whole models sees
what ORT fuses and how its kernels block channels; a per-layer table would not. The estimate is
linear, with non-negative weights, in a constant plus, per output resolution, the conv FLOPs and
the activation volume written: early high-resolution layers cost more per FLOP than late ones.
A share of the models is held out to measure the estimate's error; its 90th percentile becomes
the margin the budget keeps until the search has measured candidates of its own.

During a search the same timer measures candidates, in the unpruned model's ms as measured when
the search started; `calibrated` rescales the fit to those measurements, which all lie on the
budget boundary, and narrows the margin to their spread. A fit over the whole range of budgets
carries a bias at any one budget (measured: 3-7% under the limit); the calibrated estimate does not.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from yoloprune.atomic import write_text_atomic
from yoloprune.cache import cache_root
from yoloprune.errors import UserError
from yoloprune.structure.pruner import prune
from yoloprune.structure.space import PruneSpace

MIN_MARGIN = 0.02
MIN_LOCAL_MARGIN = 0.015  # calibrated on measured neighbours: the run-to-run noise of a paired ORT median
LOCAL_POINTS = 3  # measured candidates before the calibrated margin replaces the fit's
# a cached fit is kept while it predicts the unpruned model, measured now, within max(DRIFT, 2 x its margin):
# a shared or throttled machine can run 1.4x slower on another day (measured here), and not uniformly so
DRIFT = 0.10
FORMAT = 2  # cache entries of another format are refitted (2: measured run for run against the unpruned model)


@dataclass
class LatencyModel:
    """ms = scale x coef . features(rates); margin = held-out 90th-percentile relative error (at least
    MIN_MARGIN), or the spread of the measured candidates once calibrated."""

    key: dict
    levels: list[float]
    coef: list[float]
    margin: float
    held_out: dict
    scale: float = 1.0

    @property
    def threads(self) -> int:
        return int(self.key["threads"])

    @classmethod
    def load(cls, path: Path) -> LatencyModel:
        return cls(**json.loads(Path(path).read_text()))

    def predict(self, space: PruneSpace, rates: np.ndarray) -> np.ndarray:
        """Estimated ms for each row of realised rates (B, G)."""
        return self.scale * (features(space, rates, self.levels) @ np.asarray(self.coef))


def calibrated(model: LatencyModel, space: PruneSpace, rates: np.ndarray, measured_ms: np.ndarray) -> LatencyModel:
    """`model` rescaled to candidates measured during the search: scale = median measured / estimated; margin =
    90th percentile of their relative deviation from that (at least MIN_LOCAL_MARGIN) once LOCAL_POINTS are in."""
    if len(measured_ms) == 0:
        return model
    base = replace(model, scale=1.0).predict(space, np.atleast_2d(rates))
    ratio = np.asarray(measured_ms, float) / base
    scale = float(np.median(ratio))
    margin = (max(MIN_LOCAL_MARGIN, float(np.percentile(np.abs(ratio / scale - 1.0), 90)))
              if len(ratio) >= LOCAL_POINTS else model.margin)
    return replace(model, scale=scale, margin=margin)


def features(space: PruneSpace, rates: np.ndarray, levels: list[float]) -> np.ndarray:
    """(B, 1 + 2L): a constant, then per output resolution level the conv FLOPs (G) and output volume (M)."""
    cin, cout = space.conv_channels(np.atleast_2d(rates))
    flops = 2.0 * cin * cout * space.weight / 1e9
    volume = cout * space.conv_area / 1e6
    cols = [np.ones(len(cin))]
    for level in levels:
        at = np.isclose(space.conv_area, level)
        cols += [flops[:, at].sum(1), volume[:, at].sum(1)]
    return np.stack(cols, 1)


def cache_key(weights_sha256: str, space: PruneSpace, threads: int) -> dict:
    import onnxruntime
    import torch
    import ultralytics

    return {"format": FORMAT, "weights_sha256": weights_sha256, "imgsz": space.imgsz, "round_to": space.round_to,
            "threads": threads, "cpu": cpu_name(), "cores": os.cpu_count(), "onnxruntime": onnxruntime.__version__,
            "ultralytics": ultralytics.__version__, "torch": torch.__version__}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sample_rates(space: PruneSpace, n: int, seed: int = 0) -> np.ndarray:
    """n pruned configurations spread over FLOPs budgets from the deepest feasible to none: the unpruned
    model first, then random rates projected onto random FLOPs targets."""
    from yoloprune.search.budget import MAX_RATE, Budget

    rng = np.random.default_rng(seed)
    floor = float(space.flops_ratio(np.full((1, len(space.groups)), MAX_RATE))[0])
    if floor > 0.95:
        raise UserError(f"this model can lose at most {1 - floor:.1%} of its FLOPs: too little to fit a latency model")
    rows = [np.zeros(len(space.groups))]
    for target in rng.uniform(floor + 0.02, 0.98, n - 1):
        rows.append(Budget(space, float(target)).project(rng.random((1, len(space.groups))) * MAX_RATE)[0])
    return np.array(rows)


def export_rates(loaded, space: PruneSpace, row: np.ndarray, out_dir: Path, label: str) -> Path:
    """The ONNX file (Ultralytics' exporter, in `out_dir`) of `loaded` pruned by one row of rates."""
    from yoloprune.latency.bench import export_model

    pruned = prune(loaded.model, space, dict(zip(space.names, map(float, row))))
    return export_model(pruned, loaded.train_args, space.imgsz, out_dir, label)


class PairedTimer:
    """Latency of pruned models measured run for run against the unpruned model, in the unpruned model's ms as
    measured when the timer started, or in `reference_ms` when given (a resumed run keeps its first run's unit):
    a machine that slows down or speeds up during a search moves both alike."""

    def __init__(self, loaded, space: PruneSpace, threads: int, runs: int = 30, warmup: int = 5,
                 reference_ms: float | None = None):
        from yoloprune.latency.bench import alternate, session

        self.loaded, self.space, self.threads, self.runs, self.warmup = loaded, space, threads, runs, warmup
        self.tmp = Path(tempfile.mkdtemp(prefix="yoloprune-timer-"))
        self.x = np.random.default_rng(0).random((1, 3, space.imgsz, space.imgsz), dtype=np.float32)
        unpruned = export_rates(loaded, space, np.zeros(len(space.groups)), self.tmp, "unpruned")
        self.unpruned = session(unpruned, threads)
        self.measured_unpruned_ms = float(np.median(alternate([self.unpruned], self.x, 2 * runs, warmup)))
        self.unpruned_ms = reference_ms or self.measured_unpruned_ms

    def measure(self, rates: np.ndarray) -> float:
        """Drift-corrected ms of the model pruned by `rates` (one row)."""
        from yoloprune.latency.bench import alternate, session

        work = self.tmp / "candidate"
        work.mkdir(exist_ok=True)
        try:
            candidate = session(export_rates(self.loaded, self.space, rates, work, "c"), self.threads)
            ms, unpruned_now = np.median(alternate([candidate, self.unpruned], self.x, self.runs, self.warmup), 1)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return float(ms * self.unpruned_ms / unpruned_now)

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def fit(space: PruneSpace, rates: np.ndarray, ms: np.ndarray, key: dict, held_out: int) -> LatencyModel:
    """Non-negative least squares on all but the last `held_out` models; the rest measure the error."""
    from scipy.optimize import nnls

    levels = sorted({float(a) for a in space.conv_area}, reverse=True)
    x = features(space, rates, levels)
    n_fit = len(rates) - held_out
    scale = np.maximum(np.abs(x[:n_fit]).max(0), 1e-12)
    coef, _ = nnls(x[:n_fit] / scale, ms[:n_fit])
    coef = coef / scale
    err = np.abs(x[n_fit:] @ coef - ms[n_fit:]) / ms[n_fit:] if held_out else np.zeros(1)
    stats = {"models": int(held_out), "median_rel_error": float(np.median(err)), "max_rel_error": float(err.max()),
             "p90_rel_error": float(np.percentile(err, 90)),
             "fit_models": int(n_fit), "measured_ms": ms[n_fit:].tolist(), "estimated_ms": (x[n_fit:] @ coef).tolist()}
    return LatencyModel(key, levels, coef.tolist(), max(MIN_MARGIN, stats["p90_rel_error"]), stats)


def cache_dir() -> Path:
    return cache_root() / "latency"


def latency_model(timer: PairedTimer, weights_sha256: str, models: int = 60,
                  log: Callable[[str], None] | None = None) -> LatencyModel:
    """The cached latency model for the timer's model, machine, thread count and image size, fitted if missing or
    if the machine's speed has changed since (`models` measured by `timer`, a third of them, at most 20, held out
    to measure the error)."""
    space = timer.space
    key = {**cache_key(weights_sha256, space, timer.threads), "models": models}
    path = cache_dir() / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20] + ".json")
    try:
        cached = LatencyModel.load(path)
        if cached.key == key:
            now = timer.measured_unpruned_ms
            said = float(cached.predict(space, space.realised_rates(np.zeros((1, len(space.groups)))))[0])
            if abs(now / said - 1.0) <= max(DRIFT, 2 * cached.margin):
                return cached
            if log:
                log(f"latency model: the unpruned model measures {now:.2f} ms, the cached fit says {said:.2f} ms: "
                    f"this machine's speed has changed; fitting again")
    except (OSError, ValueError, TypeError):  # missing, torn or of another format: fit again
        pass
    def holdout_for(n: int) -> int:
        return max(1, min(20, n // 3))

    held_out = holdout_for(models)
    fitted = 2 + 2 * len({float(a) for a in space.conv_area})  # one more than the latency features
    if models - held_out < fitted:
        needed = next(n for n in range(fitted, 4 * fitted + 4) if n - holdout_for(n) >= fitted)
        raise UserError(f"--latency-models {models} is too few for this model: at least {needed} (one more than "
                        f"its latency features, plus the held-out third)")
    rates = sample_rates(space, models)
    measured = []
    for row in rates:
        measured.append(timer.measure(row))
        if log:
            log(f"latency model: measured {len(measured)}/{models} ({measured[-1]:.2f} ms)")
    model = fit(space, rates, np.array(measured), key, held_out)
    try:
        write_text_atomic(path, json.dumps(asdict(model), indent=2))
    except OSError as e:
        if log:
            log(f"latency model not cached ({e}); the next search fits it again")
    return model
