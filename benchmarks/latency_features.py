"""Would the latency model gain from seeing channel alignment? `--models` random pruned variants of the default
model (latency.sample_rates) are timed run for run against the unpruned model (latency.PairedTimer), then the
fit's features alone and with per-resolution "misaligned volume" (output channels off a multiple of 16 or 32,
times their area) are compared by 4-fold cross-validated relative error (non-negative least squares, as
latency.fit). The result decides whether such features earn a place in latency.features.

    python benchmarks/latency_features.py [--models 80]
"""

from __future__ import annotations

import argparse

import common
import numpy as np
from scipy.optimize import nnls

from yoloprune import api
from yoloprune.default.problem import DEFAULT_WEIGHTS
from yoloprune.latency.model import PairedTimer, features, sample_rates

FOLDS = 4


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=80)
    args = parser.parse_args()
    loaded = api.load(DEFAULT_WEIGHTS)
    space = api.analyse(loaded)
    rates = sample_rates(space, args.models, seed=5)
    timer = PairedTimer(loaded, space, threads=1)
    try:
        ms = np.array([timer.measure(row) for row in rates])
    finally:
        timer.close()
    levels = sorted({float(a) for a in space.conv_area}, reverse=True)
    base = features(space, rates, levels)
    variants = {"fit features": base,
                "+ off 16": np.hstack([base, misaligned(space, rates, levels, 16)]),
                "+ off 32": np.hstack([base, misaligned(space, rates, levels, 32)]),
                "+ off 16 and 32": np.hstack([base, misaligned(space, rates, levels, 16),
                                              misaligned(space, rates, levels, 32)])}
    rows = []
    for name, x in variants.items():
        err = cross_validated_error(x, ms)
        rows.append({"features": name, "median_rel_error": float(np.median(err)),
                     "p90_rel_error": float(np.percentile(err, 90)), "max_rel_error": float(err.max())})
        print(f"{name:<16} median {rows[-1]['median_rel_error']:.2%}  p90 {rows[-1]['p90_rel_error']:.2%}  "
              f"max {rows[-1]['max_rel_error']:.2%}")
    print(common.write_result("latency_features", {"models": args.models, "folds": FOLDS, "threads": 1,
                                                   "unpruned_ms": timer.unpruned_ms, "rows": rows}))


def misaligned(space, rates: np.ndarray, levels: list[float], multiple: int) -> np.ndarray:
    """(B, L): per output resolution, the output volume (M) of convs whose channel count is off `multiple`."""
    _, cout = space.conv_channels(rates)
    volume = (np.round(cout) % multiple != 0) * cout * space.conv_area / 1e6
    return np.stack([volume[:, np.isclose(space.conv_area, level)].sum(1) for level in levels], 1)


def cross_validated_error(x: np.ndarray, ms: np.ndarray) -> np.ndarray:
    """Relative error of every model, each estimated by the fit on the other folds."""
    err = np.zeros(len(ms))
    fold = np.arange(len(ms)) % FOLDS
    for k in range(FOLDS):
        test = fold == k
        scale = np.maximum(np.abs(x[~test]).max(0), 1e-12)
        coef, _ = nnls(x[~test] / scale, ms[~test])
        err[test] = np.abs(x[test] @ (coef / scale) - ms[test]) / ms[test]
    return err


if __name__ == "__main__":
    main()
