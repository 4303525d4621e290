"""Deep budgets: uniform rates vs one-shot search vs staged search, after the same fine-tuning.

At a FLOPs budget where uniform rates keep under 10% of the default model's mAP after BN
recalibration (30%: benchmarks/results/score_rank_*.json and the README), each method gets the
same total number of fine-tuning epochs (Ultralytics' trainer, same fraction of the train split):
  uniform   uniform rates, then E epochs
  oneshot   hdbo search at the budget (T trials), best candidate, then E epochs
  oneshot-recovered   the same with --score recovered
  staged    --stages K: K searches of T/K trials, each stage recovered for E/K epochs
  oneshot-distill, staged-distill   the same, every fine-tune distilling from the unpruned model
Final-check mAP50-95 on 500 test images. One line per finished unit (method x seed) in
results/staged_search.jsonl; rerun to continue.

    python benchmarks/staged_search.py [--budget 0.3] [--trials 40] [--epochs 2 --fraction 0.5] [--stages 2]
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
from yoloprune.search.staged import run_staged

METHODS = ("uniform", "oneshot", "staged", "oneshot-recovered", "oneshot-distill", "staged-distill")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=2, help="total fine-tuning epochs per method")
    parser.add_argument("--fraction", type=float, default=0.5, help="share of the train split per epoch")
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--methods", default="uniform,oneshot,staged")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS),
                        help="model to prune (default: the embedded default; units of other models are keyed by name)")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    log = common.UnitLog("staged_search")
    setting = {"budget": args.budget, "trials": args.trials, "epochs": args.epochs, "fraction": args.fraction,
               "stages": args.stages}
    model = "" if Path(args.weights) == DEFAULT_WEIGHTS else Path(args.weights).stem + "/"
    if not args.table_only:
        data = default_dataset()
        for method in args.methods.split(","):
            for seed in (0,) if method == "uniform" else map(int, args.seeds.split(",")):
                unit = f"{model}{method}/{seed}/" + "/".join(str(v) for v in setting.values())
                if unit in log.done():
                    continue
                run = Path("benchmarks/runs/staged") / unit.replace("/", "-")
                shutil.rmtree(run, ignore_errors=True)
                t0 = time.perf_counter()
                row = run_unit(method, seed, args, str(data.yaml_path), run)
                log.append(unit, {"model": model.rstrip("/") or "default", "method": method, "seed": seed,
                                  **setting, **row,
                                  "wall_seconds": time.perf_counter() - t0})
                print(unit, round(row["final_map50_95"], 4), flush=True)
    print_table(log.done(), setting, model.rstrip("/") or "default")


def run_unit(method: str, seed: int, args, data: str, run: Path) -> dict:
    cfg = SearchConfig(args.weights, data, args.budget, trials=args.trials, seed=seed,
                       project=str(run.parent), name=run.name, finetune_fraction=args.fraction,
                       distill_from=args.weights if method.endswith("-distill") else None)
    method = method.removesuffix("-distill")
    if method == "staged":
        s = run_staged(SearchConfig(**{**cfg.__dict__, "stages": args.stages,
                                       "recover_epochs": args.epochs // args.stages}))
        return {"final_map50_95": s["final_check_map50_95"], "flops_ratio": s["flops_ratio"], "params": s["params"],
                "stage_regimes": [x["regime"] for x in s["stage_summaries"]],
                "stage_maps_before_recovery": [x["best"]["final_check_map50_95"] for x in s["stage_summaries"]]}
    strategy, score = {"uniform": ("uniform", "map"), "oneshot": ("hdbo", "map"),
                       "oneshot-recovered": ("hdbo", "recovered")}[method]
    s = run_search(SearchConfig(**{**cfg.__dict__, "strategy": strategy, "score": score,
                                   "finetune_epochs": args.epochs}))
    return {"final_map50_95": s["finetuned_final_check_map50_95"], "flops_ratio": s["best"]["flops_ratio"],
            "params": s["best"]["params"], "map50_95_before_finetune": s["best"]["final_check_map50_95"],
            "regime": s["regime"]}


def print_table(rows: dict, setting: dict, model: str) -> None:
    print(f"{setting['budget']:.0%} FLOPs, {setting['trials']} trials, {setting['epochs']} fine-tune epochs on "
          f"{setting['fraction']:.0%} of train in total; final-check mAP50-95 (500 test images)")
    print(f"{'method':<18} {'seeds':>5} {'mean':>7} {'std':>7}  per seed")
    for method in METHODS:
        v = [r["final_map50_95"] for r in rows.values() if r["method"] == method
             and r.get("model", "default") == model and all(r[k] == setting[k] for k in setting)]
        if v:
            print(f"{method:<18} {len(v):>5} {np.mean(v):>7.4f} {np.std(v):>7.4f}  " + " ".join(f"{x:.4f}" for x in v))


if __name__ == "__main__":
    main()
