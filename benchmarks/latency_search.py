"""Does latency-aware search earn its place? On the default model, at one measured ONNX Runtime latency
budget (1 thread): the latency model's error on held-out pruned models, then the final-check mAP of
`search --max-latency-ms L` against the best FLOPs-only search (three FLOPs budgets around the one
the latency implies) whose best model MEASURES within L, seed by seed. One line per finished unit
(search x seed) in results/latency_search.jsonl; rerun to continue.

    python benchmarks/latency_search.py [--trials 30] [--speedup 1.6] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import common
import numpy as np

from yoloprune import api
from yoloprune.budget import Budget
from yoloprune.checkpoint import file_sha256
from yoloprune.defaults import DEFAULT_WEIGHTS, default_dataset
from yoloprune.latency import latency_model, measure
from yoloprune.search import SearchConfig, run_search

THREADS = 1
CALIB_IMAGES = 200  # the setting of the first units (seed 0), kept so every seed compares alike


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--speedup", type=float, default=1.6, help="latency budget = unpruned latency / speedup")
    parser.add_argument("--seeds", default="0")
    args = parser.parse_args()
    log = common.UnitLog("latency_search")
    data = default_dataset()
    loaded = api.load(DEFAULT_WEIGHTS)
    space = api.analyse(loaded)
    model = latency_model(loaded, space, THREADS, file_sha256(DEFAULT_WEIGHTS), log=print)
    # one reference per latency fit: a machine whose speed moved gets a new fit (latency.DRIFT), a new limit, new units
    ref_key = "reference/" + hashlib.sha256(json.dumps(model.coef).encode()).hexdigest()[:8]
    if ref_key not in log.done():
        unpruned = float(measure(loaded, space, np.zeros((1, len(space.groups))), THREADS, runs=100)[0])
        log.append(ref_key, {"unpruned_ms": unpruned, "held_out": model.held_out, "margin": model.margin,
                             "threads": THREADS})
    ref = log.done()[ref_key]
    limit = round(ref["unpruned_ms"] / args.speedup, 2)
    at_limit = Budget(space, None, latency=model, max_latency_ms=limit)
    uniform_at_limit = at_limit.project(np.zeros((1, len(space.groups))))
    implied = float(space.flops_ratio(uniform_at_limit)[0])
    floor = float(space.flops_ratio(np.full((1, len(space.groups)), Budget(space, 0.99).max_rate))[0])
    runs = {"aware": {"max_latency_ms": limit}}
    for f in (max(implied - 0.05, floor + 0.01), implied, min(implied + 0.05, 0.99)):
        runs[f"flops-{f:.3f}"] = {"target_flops": round(f, 3)}
    for seed in map(int, args.seeds.split(",")):
        for unit, budget in runs.items():
            key = f"{unit}/{limit}/{args.trials}" + (f"/s{seed}" if seed else "")  # seed-0 keys predate --seeds
            if key in log.done():
                continue
            run = Path("benchmarks/runs/latency") / key.replace("/", "-")
            shutil.rmtree(run, ignore_errors=True)
            s = run_search(SearchConfig(str(DEFAULT_WEIGHTS), str(data.yaml_path), trials=args.trials, seed=seed,
                                        calib_images=CALIB_IMAGES, project=str(run.parent), name=run.name, **budget),
                           log=print)
            ms = s["measured_latency_ms"]
            if ms is None:
                ms = float(measure(loaded, space, space.rates_vector(s["best"]["rates"])[None], THREADS, runs=50)[0])
            log.append(key, {"search": unit, "seed": seed, "limit_ms": limit, **budget, "measured_ms": ms,
                             "meets_limit": ms <= limit, "flops_ratio": s["best"]["flops_ratio"],
                             "final_check_map50_95": s["best"]["final_check_map50_95"], "trials": s["trials"]})
    print_table(log.done(), ref, limit)


def print_table(rows: dict[str, dict], ref: dict, limit: float) -> None:
    h = ref["held_out"]
    print(f"latency model ({ref['threads']} thread): held-out median relative error {h['median_rel_error']:.1%}, "
          f"max {h['max_rel_error']:.1%} over {h['models']} pruned models; unpruned {ref['unpruned_ms']:.2f} ms")
    print(f"budget {limit} ms")
    searches = [r for k, r in rows.items() if not k.startswith("reference") and r["limit_ms"] == limit]
    for r in searches:
        print(f"{r['search']:<14} seed {r.get('seed', 0)} {r['trials']:>3} trials  FLOPs kept {r['flops_ratio']:.3f}  "
              f"measured {r['measured_ms']:.2f} ms ({'meets' if r['meets_limit'] else 'OVER'})  "
              f"final-check mAP50-95 {r['final_check_map50_95']:.4f}")
    for trials in sorted({r["trials"] for r in searches}):
        pairs = []
        for seed in sorted({r.get("seed", 0) for r in searches if r["trials"] == trials}):
            same = [r for r in searches if r["trials"] == trials and r.get("seed", 0) == seed]
            flops_only = [r for r in same if r["search"].startswith("flops") and r["meets_limit"]]
            aware = [r for r in same if r["search"] == "aware"]
            if aware and flops_only:
                best = max(flops_only, key=lambda r: r["final_check_map50_95"])
                pairs.append((aware[0]["final_check_map50_95"], best["final_check_map50_95"]))
                print(f"{trials} trials, seed {seed}: latency-aware {pairs[-1][0]:.4f} vs best FLOPs-only within "
                      f"the budget {pairs[-1][1]:.4f} ({best['search']})")
        if len(pairs) > 1:
            a, f = np.array(pairs).T
            print(f"{trials} trials, {len(pairs)} seeds: latency-aware {a.mean():.4f} ± {a.std():.4f} vs best "
                  f"FLOPs-only within the budget {f.mean():.4f} ± {f.std():.4f}; aware ahead in {int((a > f).sum())}")


if __name__ == "__main__":
    main()
