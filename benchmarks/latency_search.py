"""Does latency-aware search earn its place? On the default model, at one ONNX Runtime latency budget
(1 thread, budget = unpruned latency / speedup): the latency model's error on held-out pruned models, then the
final-check mAP of `search --min-speedup S` (`--max-latency-ms L` in units named `aware`) against the best
FLOPs-only search that meets the budget, seed by seed. FLOPs-only runs at three budgets straddling the measured
boundary: the FLOPs of the uniform model that MEASURES at the budget (bisection, each model timed against the
unpruned one), and +-5 points (`--extra-flops` adds more). After each seed
the unpruned model and the seed's best models are timed side by side, run for run (as `bench` does), so machine
drift hits all alike; a model meets the budget when its speedup over the unpruned model, measured there,
reaches `--speedup`. One line per finished unit (search x seed, timing x seed) in
results/latency_search.jsonl; rerun to continue. Units named `aware` ran the search before it calibrated its
estimate on measured candidates (before 2026-11-30); `aware-cal` calibrated it on measured incumbents;
`aware-cal2` also measures the first 3 trials, on a fit timed run for run against the unpruned model.

    python benchmarks/latency_search.py [--trials 60] [--speedup 1.6] [--seeds 0,1,2] [--extra-flops 0.549]
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import shutil
from pathlib import Path

import common
import numpy as np

from yoloprune import api
from yoloprune.checkpoint import file_sha256
from yoloprune.default.problem import DEFAULT_WEIGHTS, default_dataset
from yoloprune.latency.bench import benchmark
from yoloprune.latency.model import PairedTimer, latency_model
from yoloprune.search.budget import Budget
from yoloprune.search.config import SearchConfig
from yoloprune.search.loop import run_search

THREADS = 1
CALIB_IMAGES = 200  # the setting of the first units (seed 0), kept so every seed compares alike
TIMING_RUNS = 100
RUNS = Path("benchmarks/runs/latency")
AWARE = "aware-cal2"
RULES = ("best FLOPs-only budget, timed side by side", "best FLOPs-only budget, each timed after its search",
         "1 search at the measured uniform boundary")  # which FLOPs-only model counts, and how "within" is judged


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--speedup", type=float, default=1.6, help="latency budget = unpruned latency / speedup")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--extra-flops", default="",
                        help="more FLOPs-only budgets beside the three around the boundary, e.g. 0.549; each seed's "
                             "models are then timed side by side again, all together")
    args = parser.parse_args()
    log = common.UnitLog("latency_search")
    data = default_dataset()
    loaded = api.load(DEFAULT_WEIGHTS)
    space = api.analyse(loaded)
    timer = PairedTimer(loaded, space, THREADS, runs=50)
    atexit.register(timer.close)
    model = latency_model(timer, file_sha256(DEFAULT_WEIGHTS), log=print)
    # one reference per latency fit: a machine whose speed moved gets a new fit (latency.DRIFT), a new limit, new units
    ref_key = "reference/" + hashlib.sha256(json.dumps(model.coef).encode()).hexdigest()[:8]
    if ref_key not in log.done():
        boundary = measured_boundary(timer, space, args.speedup)
        log.append(ref_key, {"unpruned_ms": timer.unpruned_ms, "held_out": model.held_out, "margin": model.margin,
                             "threads": THREADS, "speedup": args.speedup, **boundary})
    ref = log.done()[ref_key]
    limit = round(ref["unpruned_ms"] / args.speedup, 2)
    runs = {AWARE: {"min_speedup": args.speedup}}  # the judge's own terms: speedup measured run for run
    extra = [float(f) for f in args.extra_flops.split(",") if f]
    for f in ref["flops_budgets"] + extra:
        runs[f"flops-{f:.3f}"] = {"target_flops": f}
    for seed in map(int, args.seeds.split(",")):
        keys = {}
        for unit, budget in runs.items():
            key = keys[unit] = f"{unit}/{limit}/{args.trials}" + (f"/s{seed}" if seed else "")  # as before --seeds
            if key in log.done():
                continue
            run = RUNS / key.replace("/", "-")
            shutil.rmtree(run, ignore_errors=True)
            s = run_search(SearchConfig(str(DEFAULT_WEIGHTS), str(data.yaml_path), trials=args.trials, seed=seed,
                                        calib_images=CALIB_IMAGES, project=str(run.parent), name=run.name, **budget),
                           log=print)
            ms, own_limit = s["measured_latency_ms"], s["max_latency_ms"] or limit  # aware: its own start's ms
            if ms is None:
                ms = timer.measure(space.rates_vector(s["best"]["rates"])) * ref["unpruned_ms"] / timer.unpruned_ms
            log.append(key, {"search": unit, "seed": seed, "limit_ms": limit, "own_limit_ms": own_limit, **budget,
                             "measured_ms": ms, "meets_limit": ms <= own_limit, "flops_ratio": s["best"]["flops_ratio"],
                             "latency_calibration": s["latency_calibration"],
                             "final_check_map50_95": s["best"]["final_check_map50_95"], "trials": s["trials"]})
        timing_key = f"timing/{limit}/{args.trials}/s{seed}" + "".join(f"+{f:.3f}" for f in extra)
        if timing_key not in log.done():
            paths = [str(DEFAULT_WEIGHTS)] + [str(RUNS / k.replace("/", "-") / "pruned.pt") for k in keys.values()]
            timed = benchmark(paths, imgsz=space.imgsz, threads=(THREADS,), runs=TIMING_RUNS)
            log.append(timing_key, {"seed": seed, "limit_ms": limit, "trials": args.trials, "speedup": args.speedup,
                                    "runs": TIMING_RUNS, "unpruned_ms": timed[0].latency[THREADS]["p50_ms"],
                                    "models": {k: {"p50_ms": m.latency[THREADS]["p50_ms"],
                                                   "speedup": m.latency[THREADS]["speedup"]}
                                               for k, m in zip(keys.values(), timed[1:])}})
    print_table(log.done(), ref, limit)


def measured_boundary(timer: PairedTimer, space, speedup: float, steps: int = 7) -> dict:
    """FLOPs kept by the uniform-rate model that measures `speedup` over the unpruned model (bisection, each step
    timed run for run against the unpruned model), and the three FLOPs-only budgets around it (-0.05, 0, +0.05)."""
    floor = float(space.flops_ratio(np.full((1, len(space.groups)), Budget(space, 0.99).max_rate))[0])
    lo, hi, steps_ms = floor + 0.01, 0.99, []
    limit = timer.unpruned_ms / speedup
    for _ in range(steps):
        mid = (lo + hi) / 2
        ms = timer.measure(Budget(space, mid).project(np.zeros((1, len(space.groups))))[0])
        steps_ms.append([mid, ms])
        lo, hi = (mid, hi) if ms <= limit else (lo, mid)
    at = round(lo, 3)
    return {"boundary_flops": at, "boundary_steps": steps_ms,
            "flops_budgets": [round(max(at - 0.05, floor + 0.01), 3), at, round(min(at + 0.05, 0.99), 3)]}


def print_table(rows: dict[str, dict], ref: dict, limit: float) -> None:
    h = ref["held_out"]
    print(f"latency model ({ref['threads']} thread): held-out median relative error {h['median_rel_error']:.1%}, "
          f"max {h['max_rel_error']:.1%} over {h['models']} pruned models; unpruned {ref['unpruned_ms']:.2f} ms")
    print(f"budget {limit} ms")
    searches = {k: r for k, r in rows.items() if "search" in r and r["limit_ms"] == limit}
    timings = {}  # per trial budget and seed, the side-by-side timing of the most models
    for r in rows.values():
        if "models" in r and r["limit_ms"] == limit:
            old = timings.get((r["trials"], r["seed"]), {"models": {}})
            timings[(r["trials"], r["seed"])] = max(old, r, key=lambda t: len(t["models"]))
    for key, r in searches.items():
        t = timings.get((r["trials"], r.get("seed", 0)), {}).get("models", {}).get(key)
        side = f"  side by side {t['p50_ms']:.2f} ms = {t['speedup']:.2f}x" if t else ""
        print(f"{r['search']:<14} seed {r.get('seed', 0)} {r['trials']:>3} trials  FLOPs kept {r['flops_ratio']:.3f}  "
              f"measured {r['measured_ms']:.2f} ms{side}  final-check mAP50-95 {r['final_check_map50_95']:.4f}")
    for trials in sorted({r["trials"] for r in searches.values()}):
        rows_by_rule = {rule: [] for rule in RULES}
        for seed in sorted({r.get("seed", 0) for r in searches.values() if r["trials"] == trials}):
            same = {k: r for k, r in searches.items() if r["trials"] == trials and r.get("seed", 0) == seed}
            aware = [k for k, r in same.items() if r["search"].startswith("aware")]
            flops = sorted((k for k, r in same.items() if r["search"].startswith("flops")),
                           key=lambda k: same[k]["target_flops"])
            if not aware or len(flops) < 3:
                continue
            timing = timings.get((trials, seed))
            after = {k for k, r in same.items() if r["meets_limit"]}
            side = {k for k, m in timing["models"].items() if m["speedup"] >= timing["speedup"]} if timing else None
            at_boundary = [k for k in flops if same[k]["target_flops"] == ref.get("boundary_flops")] or flops[1:2]
            pools = {RULES[0]: (flops, side), RULES[1]: (flops, after), RULES[2]: (at_boundary, side or after)}
            a = same[aware[0]]["final_check_map50_95"]
            for rule, (pool, within) in pools.items():
                if within is None:
                    continue
                # no FLOPs-only model within the budget: nothing to deploy, counted as 0
                f = max((same[k]["final_check_map50_95"] for k in pool if k in within), default=0.0)
                rows_by_rule[rule].append((a, f))
                print(f"{trials} trials, seed {seed}: latency-aware {a:.4f}{'' if aware[0] in within else ' (OVER)'} "
                      f"vs FLOPs-only {f:.4f} [{rule}]")
        for rule, pairs in rows_by_rule.items():
            if len(pairs) > 1:
                a, f = np.array(pairs).T
                print(f"{trials} trials, {len(pairs)} seeds [{rule}]: latency-aware {a.mean():.4f} ± {a.std():.4f} vs "
                      f"FLOPs-only {f.mean():.4f} ± {f.std():.4f}; aware ahead in {int((a > f).sum())}")

if __name__ == "__main__":
    main()
