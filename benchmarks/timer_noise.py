"""How precise is one latency measurement of the search? The default model pruned uniformly to 70% and 50% of
its FLOPs is exported afresh and timed run for run against the unpruned model (as `latency.PairedTimer` does),
`--repeats` times. Printed per candidate: the relative standard deviation over repeats of the drift-corrected
latency, for 30 and 100 timed runs and for two estimators: the ratio of the two medians (PairedTimer) and the
median of the per-round ratios. The search's latency margin cannot be narrower than this noise.

    python benchmarks/timer_noise.py [--repeats 8]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import common
import numpy as np

from yoloprune import api
from yoloprune.default.problem import DEFAULT_WEIGHTS
from yoloprune.latency.bench import alternate, session
from yoloprune.latency.model import export_rates
from yoloprune.search.budget import Budget

THREADS, WARMUP, RUNS = 1, 5, 100


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    loaded = api.load(DEFAULT_WEIGHTS)
    space = api.analyse(loaded)
    zeros = np.zeros((1, len(space.groups)))
    candidates = {f"uniform-{f:.0%}": Budget(space, f).project(zeros)[0] for f in (0.7, 0.5)}
    x = np.random.default_rng(0).random((1, 3, space.imgsz, space.imgsz), dtype=np.float32)
    tmp = Path(tempfile.mkdtemp(prefix="yoloprune-noise-"))
    try:
        unpruned = session(export_rates(loaded, space, zeros[0], tmp, "unpruned"), THREADS)
        raw = {name: [] for name in candidates}
        for r in range(args.repeats):
            for name, row in candidates.items():  # a fresh export and session each time, as in a search
                work = tmp / f"{name}-{r}"
                work.mkdir()
                cand = session(export_rates(loaded, space, row, work, "c"), THREADS)
                raw[name].append(alternate([cand, unpruned], x, RUNS, WARMUP))
                shutil.rmtree(work)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for name, reps in raw.items():
        for runs in (30, RUNS):
            for estimator in ("ratio of medians", "median of ratios"):
                ratios = np.array([estimate(c[:runs], u[:runs], estimator) for c, u in reps])
                rows.append({"candidate": name, "runs": runs, "estimator": estimator,
                             "mean_ratio": float(ratios.mean()), "rel_std": float(ratios.std(ddof=1) / ratios.mean()),
                             "rel_range": float(np.ptp(ratios) / ratios.mean())})
                print(f"{name:<12} {runs:>3} runs  {estimator:<17} latency / unpruned {ratios.mean():.4f}  "
                      f"relative std {rows[-1]['rel_std']:.2%}  range {rows[-1]['rel_range']:.2%}")
    print(common.write_result("timer_noise", {"repeats": args.repeats, "threads": THREADS, "warmup": WARMUP,
                                              "rows": rows}))


def estimate(cand: np.ndarray, unpruned: np.ndarray, estimator: str) -> float:
    if estimator == "ratio of medians":
        return float(np.median(cand) / np.median(unpruned))
    return float(np.median(cand / unpruned))


if __name__ == "__main__":
    main()
