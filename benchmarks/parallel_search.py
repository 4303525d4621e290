"""Trials on Ray workers: throughput and search quality on the default problem (hdbo, 50% FLOPs).

Throughput, measured side by side in one run (rounds alternate the settings so drift hits all):
  seq-2cpu  --workers 1 (this process, torch on both cores: the default)
  seq-1cpu  --workers 1 --worker-cpus 1
  ray-2x1   --workers 2 --worker-cpus 1
Trials per hour count the search loop only (Ray start-up and actor loading are reported apart);
BO overhead is the driver's proposal time as a share of the loop's wall time.
Quality: final-check mAP50-95 of sequential and parallel hdbo at the same trial count, per seed.
One line per finished unit in results/parallel_search.jsonl; rerun to continue.

    python benchmarks/parallel_search.py [--throughput-trials 30 --rounds 2] [--trials 40 --seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import common
import numpy as np

from yoloprune.default.problem import DEFAULT_WEIGHTS, default_dataset
from yoloprune.search.config import SearchConfig
from yoloprune.search.loop import run_search

SETTINGS = {"seq-2cpu": {"workers": 1}, "seq-1cpu": {"workers": 1, "worker_cpus": 1},
            "ray-2x1": {"workers": 2, "worker_cpus": 1}}
BUDGET = 0.5
RUNS = Path("benchmarks/runs/parallel")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--throughput-trials", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    log = common.UnitLog("parallel_search")
    data = str(default_dataset().yaml_path)
    for r in range(args.rounds):
        for name, setting in SETTINGS.items():
            unit = f"throughput/{name}/{args.throughput_trials}/{r}"
            if unit not in log.done():
                log.append(unit, {"kind": "throughput", "setting": name, "round": r,
                                  **run_unit(data, setting, args.throughput_trials, seed=100 + r, unit=unit)})
    if not args.skip_quality:
        for seed in map(int, args.seeds.split(",")):
            for name in ("seq-2cpu", "ray-2x1"):
                unit = f"quality/{name}/{args.trials}/{seed}"
                if unit not in log.done():
                    log.append(unit, {"kind": "quality", "setting": name, "seed": seed,
                                      **run_unit(data, SETTINGS[name], args.trials, seed, unit)})
    print_tables(log.done(), args)


def run_unit(data: str, setting: dict, trials: int, seed: int, unit: str) -> dict:
    run = RUNS / unit.replace("/", "-")
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    s = run_search(SearchConfig(str(DEFAULT_WEIGHTS), data, BUDGET, trials=trials, seed=seed, project=str(run.parent),
                                name=run.name, **setting))
    wall = time.perf_counter() - t0
    print(unit, f"{s['trials_per_hour']:.0f} trials/h, BO {s['bo_overhead_share']:.1%}, final "
                f"{s['best']['final_check_map50_95']:.4f}", flush=True)
    return {"trials": s["trials"], "trials_per_hour": s["trials_per_hour"], "search_seconds": s["search_seconds"],
            "wall_seconds": wall, "bo_overhead_share": s["bo_overhead_share"],
            "final_check_map50_95": s["best"]["final_check_map50_95"], "workers": s["workers"]}


def print_tables(rows: dict, args) -> None:
    tp = [r for r in rows.values() if r["kind"] == "throughput" and r["trials"] == args.throughput_trials]
    rate = {n: np.mean([r["trials_per_hour"] for r in tp if r["setting"] == n] or [np.nan]) for n in SETTINGS}
    print(f"\nthroughput ({args.throughput_trials} hdbo trials at {BUDGET:.0%} FLOPs, mean over rounds)")
    print(f"{'setting':<10} {'trials/h':>9} {'BO share':>9} {'start-up s':>11}")
    for n in SETTINGS:
        mine = [r for r in tp if r["setting"] == n]
        if mine:
            print(f"{n:<10} {rate[n]:>9.0f} {np.mean([r['bo_overhead_share'] for r in mine]):>9.1%} "
                  f"{np.mean([r['wall_seconds'] - r['search_seconds'] for r in mine]):>11.1f}")
    print(f"ray-2x1 / seq-2cpu = {rate['ray-2x1'] / rate['seq-2cpu']:.2f}x (target 1.3x); "
          f"ray-2x1 / seq-1cpu = {rate['ray-2x1'] / rate['seq-1cpu']:.2f}x (target 1.7x)")
    q = [r for r in rows.values() if r["kind"] == "quality" and r["trials"] == args.trials]
    print(f"\nquality ({args.trials} trials, final-check mAP50-95 on 500 test images)")
    for n in ("seq-2cpu", "ray-2x1"):
        v = [r["final_check_map50_95"] for r in sorted(q, key=lambda r: r["seed"]) if r["setting"] == n]
        if v:
            print(f"{n:<10} {np.mean(v):.4f} +- {np.std(v):.4f}  " + " ".join(f"{x:.4f}" for x in v))


if __name__ == "__main__":
    main()
