"""Measured ONNX Runtime speedup next to the FLOPs ratio for the default model pruned uniformly to
a FLOPs budget with --round-to 1, 8 and 16 (all models timed alternately in one run).

    python benchmarks/rounding_latency.py [--budget 0.5] [--runs 100]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import common
import numpy as np

from yoloprune import api
from yoloprune.default.problem import DEFAULT_WEIGHTS
from yoloprune.latency.bench import benchmark
from yoloprune.search.budget import Budget


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    loaded = api.load(DEFAULT_WEIGHTS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = [str(DEFAULT_WEIGHTS)]
        for k in (1, 8, 16):
            space = api.analyse(loaded, round_to=k)
            rates = Budget(space, args.budget).project(np.zeros((1, len(space.groups))))[0]
            result = api.prune(loaded, dict(zip(space.names, rates)), round_to=k, space=space)
            paths.append(str(api.save_pruned(result, loaded, Path(tmp) / f"round{k}.pt")))
            rows.append({"round_to": k, "flops_ratio": result.flops_after / result.flops_before})
        models = benchmark(paths, loaded.imgsz, (1, 2), runs=args.runs, warmup=10)
    for row, m in zip(rows, models[1:]):
        row.update({f"speedup_{t}t": m.latency[t]["speedup"] for t in (1, 2)},
                   **{f"p50_ms_{t}t": m.latency[t]["p50_ms"] for t in (1, 2)})
        print(f"round-to {row['round_to']:>2}: FLOPs kept {row['flops_ratio']:.1%} (ideal speedup "
              f"{1 / row['flops_ratio']:.2f}x); ORT speedup 1 thread {row['speedup_1t']:.2f}x, "
              f"2 threads {row['speedup_2t']:.2f}x")
    print(common.write_result("rounding_latency", {"budget": args.budget, "runs": args.runs, "rows": rows,
                                                   "unpruned_p50_ms": {t: models[0].latency[t]["p50_ms"] for t in (1, 2)}}))


if __name__ == "__main__":
    main()
