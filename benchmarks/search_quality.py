"""Search quality: final-check mAP50-95 (BN recalibrated, no fine-tuning) of each strategy's best candidate,
strategy x FLOPs budget x seed, same trial budget for all. One line per finished unit in
results/search_quality.jsonl; rerun to continue, finished units are skipped.

    python benchmarks/search_quality.py [--trials 40] [--budgets 0.5,0.4,0.6] [--strategies ...]

`hdbo-box` is the trust-region ablation: hdbo with every acquisition candidate drawn across the whole box
instead of half of them around the incumbent; `hdbo-auto` is hdbo with --criterion auto. `sensitivity` is the
peers' per-group scan: at --trials 40 a coarse scan of 12 blocks of groups (38 trials), at --trials 152 every
group alone (its natural cost on the default problem's 50 groups). The `hdbo-warm3` rows are a second design of
hdbo-warm, measured and reverted (commit 950c68b: three rates per block over half the trials, the allocation,
then hdbo with a trust region half as wide); no option runs it now. Rows carry the search slice's seed
(--slice-seed); rows without one were scored on the first val images (before the slice became a seeded draw)
and print as "first-N slice".
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import common
import numpy as np

from yoloprune.default.problem import DEFAULT_WEIGHTS, default_dataset
from yoloprune.search.config import SearchConfig
from yoloprune.search.loop import run_search
from yoloprune.search.strategies import HDBO

VARIANTS = {"hdbo-box": ("hdbo", {}, (HDBO, "trust_region", False)),
            "hdbo-auto": ("hdbo", {"criterion": "auto"}, (None, None, None)),
            "hdbo-l1": ("hdbo", {"criterion": "l1"}, (None, None, None))}

SEEDS = {0.5: (0, 1, 2), 0.4: (0,), 0.6: (0,)}
SEED_FREE = ("uniform", "global", "sensitivity")  # the same run whatever the seed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--budgets", default="0.5,0.4,0.6")
    parser.add_argument("--strategies", default="uniform,global,hdbo,random,bocr,saas")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: 0,1,2 at 50%%, else 0)")
    parser.add_argument("--slice-seed", type=int, default=0)
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS), help="default: the embedded default model")
    parser.add_argument("--redo", action="store_true",
                        help="rerun finished units (after a fix); the table reads the newest line of a unit")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    log = common.UnitLog("search_quality")
    if not args.table_only:
        data = default_dataset()
        for budget in (float(b) for b in args.budgets.split(",")):
            for strategy in args.strategies.split(","):
                seeds = tuple(map(int, args.seeds.split(","))) if args.seeds else SEEDS.get(budget, (0,))
                for seed in ((0,) if strategy in SEED_FREE else seeds):
                    unit = f"{strategy}/{budget}/{seed}/{args.trials}/slice{args.slice_seed}"
                    if Path(args.weights) != DEFAULT_WEIGHTS:
                        unit = f"{Path(args.weights).stem}/{unit}"
                    if unit in log.done() and not args.redo:
                        continue
                    run = Path("benchmarks/runs") / unit.replace("/", "-")
                    shutil.rmtree(run, ignore_errors=True)
                    s = run_unit(args.weights, data, budget, strategy, seed, args.trials, run, args.slice_seed)
                    log.append(unit, {"strategy": strategy, "budget": budget, "seed": seed, "trials": s["trials"],
                                      "slice_seed": args.slice_seed, "model": Path(args.weights).stem,
                                      "search_map50_95": s["best"]["map50_95"],
                                      "final_check_map50_95": s["best"]["final_check_map50_95"],
                                      "flops_ratio": s["best"]["flops_ratio"],
                                      "bo_overhead_share": s["bo_overhead_share"],
                                      "mean_trial_eval_seconds": s["mean_trial_eval_seconds"]})
                    print(unit, round(s["best"]["final_check_map50_95"], 4), flush=True)
    model = Path(args.weights).stem
    print_table({k: r for k, r in log.done().items() if r.get("model", DEFAULT_WEIGHTS.stem) == model})


def run_unit(weights: str, data, budget: float, strategy: str, seed: int, trials: int, run: Path,
             slice_seed: int) -> dict:
    """One search; a variant runs its base strategy with other settings or one class attribute switched."""
    base, settings, (cls, attr, value) = VARIANTS.get(strategy, (strategy, {}, (None, None, None)))
    saved = getattr(cls, attr) if cls else None
    if cls:
        setattr(cls, attr, value)
    try:
        return run_search(SearchConfig(str(weights), str(data.yaml_path), budget, trials=trials,
                                       strategy=base, seed=seed, project=str(run.parent), name=run.name,
                                       slice_seed=slice_seed, **settings))
    finally:
        if cls:
            setattr(cls, attr, saved)


def print_table(rows: dict[str, dict]) -> None:
    """strategy (and trial budget) x FLOPs budget: mean ± std of the final-check mAP over seeds; BO overhead."""
    cells: dict[tuple[str, float], list[dict]] = {}
    deterministic = {}
    for r in rows.values():
        if r["strategy"] in ("uniform", "global"):  # one evaluation whatever the trial budget: count it once
            if deterministic.setdefault((r["strategy"], r["budget"]), r) is not r:
                continue
        label = r["strategy"] if r["strategy"] in ("uniform", "global") else f"{r['strategy']} x{r['trials']}"
        label += f" slice{r['slice_seed']}" if "slice_seed" in r else " first-N slice"
        cells.setdefault((label, r["budget"]), []).append(r)
    budgets = sorted({b for _, b in cells})
    print(f"{'strategy':<30}" + "".join(f"{f'{b:.0%} FLOPs':>24}" for b in budgets) + "   BO overhead")
    for label in sorted({s for s, _ in cells}):
        line, overhead = f"{label:<30}", []
        for b in budgets:
            v = [r["final_check_map50_95"] for r in cells.get((label, b), [])]
            overhead += [r["bo_overhead_share"] for r in cells.get((label, b), [])]
            line += f"{'-':>24}" if not v else f"{np.mean(v):>14.4f} ± {np.std(v):.4f} (n={len(v)})"
        print(line + f"   {np.mean(overhead):.1%}")


if __name__ == "__main__":
    main()
