"""One front search against one search per budget, at the same total number of trials (issue: Pareto front).

On the default problem, per seed:
  front     `search --pareto flops --trials N --strategy hdbo|sensitivity`, then `pick` at each budget (re-scored
            on 500 test images; on a scan front pick also scores the scan's allocation at the limit)
  single    `search --target-flops B --trials N/3` at each of the budgets (its best, on the same 500 images)
and, with --part latency, the same against --min-speedup searches (`pick --min-speedup S`, measured here).
Both point sets are also compared by hypervolume on the search slice (reference: all FLOPs kept, mAP 0;
for latency, the cost is each run's final latency estimate over the unpruned model's measured ms).

One line per finished unit (part x arm x seed, or part x arm x budget x seed) in
results/pareto_search.jsonl; rerun to continue (a search killed mid-way resumes), --table-only to print.

    python benchmarks/pareto_search.py --seeds 0,1,2 [--part flops|latency] [--trials 60]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import common
import numpy as np

from yoloprune import api
from yoloprune.default.problem import DEFAULT_WEIGHTS, default_dataset
from yoloprune.errors import UserError
from yoloprune.search.pareto import hypervolume

RUNS = Path("benchmarks/runs/pareto_search")
LIMITS = {"flops": (0.35, 0.5, 0.65), "latency": (1.3, 1.6, 2.0)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", default="flops", choices=tuple(LIMITS))
    parser.add_argument("--trials", type=int, default=60, help="the front's trials; each single search gets a third")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--strategy", default="hdbo", choices=("hdbo", "sensitivity"),
                        help="the front's strategy (arm front, or front-sensitivity); single searches run hdbo")
    parser.add_argument("--front-top", type=float, default=None,
                        help="bound the front's range to at most this FLOPs share (arm front-topF); default: unbounded")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    log = common.UnitLog("pareto_search")
    if not args.table_only:
        data = str(default_dataset().yaml_path)
        for seed in map(int, args.seeds.split(",")):
            unit = f"{args.part}/{front_arm(args)}/T{args.trials}" + ("" if deterministic(args) else f"/s{seed}")
            if unit not in log.done():
                log.append(unit, run_front(args, data, seed, unit))
                print(unit, "done", flush=True)
            for limit in LIMITS[args.part]:
                unit = f"{args.part}/single/{limit}/T{args.trials // 3}/s{seed}"
                if unit not in log.done():
                    log.append(unit, run_single(args, data, seed, limit, unit))
                    print(unit, "done", flush=True)
    print_table(log.done(), args.part, args.trials, front_arm(args))


def search(args, data: str, seed: int, unit: str, **budget) -> dict:
    """api.search into the unit's run folder, resuming a run a killed session left."""
    run = RUNS / unit.replace("/", "-")
    return api.search(DEFAULT_WEIGHTS, data, seed=seed, val_images=args.val_images, project=str(run.parent),
                      name=run.name, resume=(run / "meta.json").exists(), **budget)


def run_front(args, data: str, seed: int, unit: str) -> dict:
    summary = search(args, data, 0 if deterministic(args) else seed, unit, trials=args.trials, pareto=args.part,
                     target_flops=args.front_top, strategy=args.strategy)
    run = Path(summary["run_dir"])
    front = json.loads((run / "front.json").read_text())
    picks = {}
    for limit in LIMITS[args.part]:
        kind = {"target_flops": limit} if args.part == "flops" else {"min_speedup": limit}
        try:
            r = api.pick(run, run / f"pick-{limit}.pt", **kind)
            picks[str(limit)] = {k: r[k] for k in ("trial", "flops_ratio", "search_map50_95", "final_check_map50_95",
                                                   "measured_latency_ms", "unpruned_latency_ms")}
        except UserError as e:  # reported, not hidden: the front did not reach this limit
            picks[str(limit)] = {"error": str(e)}
    # costs as a share of the unpruned model: FLOPs kept, or estimated ms over its measured ms
    per_ms = 1.0 if args.part == "flops" else 1.0 / summary["unpruned_latency_ms"]
    key = "flops_ratio" if args.part == "flops" else "latency_ms_est"
    points = [{"cost": p[key] * per_ms, "score": p["score"]} for p in front["points"]]
    return {"part": args.part, "arm": front_arm(args), "seed": None if deterministic(args) else seed,
            "trials": summary["trials"], "picks": picks,
            "points": points, "uniform": [{**u, "cost": u["cost"] * per_ms} for u in front["uniform"]],
            "search_seconds": summary["search_seconds"]}


def deterministic(args) -> bool:
    """A scan front does not depend on the seed: one unit stands for every seed."""
    return args.strategy == "sensitivity"


def front_arm(args) -> str:
    arm = "front" if args.strategy == "hdbo" else f"front-{args.strategy}"
    return arm if args.front_top is None else f"{arm}-top{args.front_top}"


def run_single(args, data: str, seed: int, limit: float, unit: str) -> dict:
    kind = {"target_flops": limit} if args.part == "flops" else {"min_speedup": limit}
    summary = search(args, data, seed, unit, trials=args.trials // 3, strategy="hdbo", **kind)
    trials = [json.loads(line) for line in (Path(summary["run_dir"]) / "trials.jsonl").read_text().splitlines()]
    if args.part == "flops":
        points = [{"cost": t["flops_ratio"], "score": t["score"]} for t in trials]
    else:
        points = [{"cost": t["latency_ms_est"] / summary["unpruned_latency_ms"], "score": t["score"]} for t in trials]
    best = summary["best"]
    return {"part": args.part, "arm": "single", "limit": limit, "seed": seed, "trials": summary["trials"],
            "best": {"trial": best["trial"], "flops_ratio": best["flops_ratio"], "search_map50_95": best["map50_95"],
                     "final_check_map50_95": best["final_check_map50_95"],
                     "measured_latency_ms": summary["measured_latency_ms"]},
            "points": points, "search_seconds": summary["search_seconds"]}


def area(points: list[dict], ref: float) -> float:
    return hypervolume(np.array([p["cost"] for p in points]), np.array([p["score"] for p in points]), ref)


def print_table(rows: dict, part: str, trials: int, arm: str) -> None:
    fronts = {r["seed"]: r for r in rows.values() if r["part"] == part and r["arm"] == arm
              and r["trials"] == trials}
    singles = [r for r in rows.values() if r["part"] == part and r["arm"] == "single" and r["trials"] == trials // 3]
    if None in fronts:  # a deterministic front: the same for every seed
        fronts = {r["seed"]: fronts[None] for r in singles}
    print(f"{part}: {arm} search x{trials} vs one search x{trials // 3} per limit; final check, 500 test images")
    print(f"{'limit':>6} {'front pick':>18} {'single search':>18} {'seeds':>6}")

    def stat(xs: list[float]) -> str:
        return f"{np.mean(xs):.4f} +- {np.std(xs):.4f}" if xs else "-"

    for limit in LIMITS[part]:
        own = [r for r in singles if r["limit"] == limit and r["seed"] in fronts]
        picked = [fronts[r["seed"]]["picks"][str(limit)].get("final_check_map50_95") for r in own]
        failed = sum(p is None for p in picked)
        print(f"{limit:>6} {stat([p for p in picked if p is not None]):>18} "
              f"{stat([r['best']['final_check_map50_95'] for r in own]):>18} {len(own):>6}"
              + (f"  ({failed} front pick(s) found nothing within the limit)" if failed else ""))
    for seed, f in sorted(fronts.items()):
        pooled = [p for r in singles if r["seed"] == seed for p in r["points"]]
        if len({r["limit"] for r in singles if r["seed"] == seed}) == len(LIMITS[part]):
            ref = 1.0
            print(f"seed {seed}: hypervolume on the search slice, front {area(f['points'], ref):.4f} "
                  f"({len(f['points'])} points), three single searches pooled {area(pooled, ref):.4f}; "
                  f"{above_uniform(f)}")


def above_uniform(front: dict) -> str:
    """How many front points (within the uniform trials' cost range) score at least the uniform-rate curve
    there (linear between the uniform trials, made monotone)."""
    uniform = sorted(front["uniform"], key=lambda u: u["cost"])
    xs, ys = [u["cost"] for u in uniform], np.maximum.accumulate([u["score"] for u in uniform])
    inside = [p for p in front["points"] if xs and xs[0] <= p["cost"] <= xs[-1]]
    above = sum(p["score"] >= np.interp(p["cost"], xs, ys) for p in inside)
    return f"front at or above the uniform-rate curve at {above} of {len(inside)} points in its range"


if __name__ == "__main__":
    main()
