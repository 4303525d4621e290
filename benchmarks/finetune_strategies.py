"""Does the search's advantage survive fine-tuning? The default model pruned to 50% FLOPs by each strategy
(the best candidates of benchmarks/search_quality.py, seed 0), each fine-tuned with one schedule, and
the unpruned model fine-tuned alike; test mAP before and after, side by side. One line per finished
unit in results/finetune_strategies.jsonl; rerun to continue.

    python benchmarks/finetune_strategies.py [--strategies hdbo,random,uniform,global] [--epochs 1 --fraction 0.5]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import common

from yoloprune import api
from yoloprune.default.problem import DEFAULT_WEIGHTS, default_dataset
from yoloprune.training.finetune import finetune

RUNS = Path("benchmarks/runs")
TEST_IMAGES = 500


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategies", default="hdbo,random,uniform,global")
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--fraction", type=float, default=0.5, help="share of the train split per epoch")
    args = parser.parse_args()
    schedule = {"epochs": args.epochs, "fraction": args.fraction, "batch": 16, "workers": 2}
    log = common.UnitLog("finetune_strategies")
    data = default_dataset()
    sources = {"unpruned": DEFAULT_WEIGHTS}
    for s in args.strategies.split(","):
        sources[s] = RUNS / f"{s}-{args.budget}-0-{args.trials}" / "pruned.pt"
    for name, weights in sources.items():
        unit = f"{name}/{args.budget}/{args.epochs}/{args.fraction}"
        if unit in log.done():
            continue
        if not Path(weights).exists():
            raise SystemExit(f"{weights} is missing: run benchmarks/search_quality.py --budgets {args.budget} first")
        before = api.evaluate(weights, data.yaml_path, split="test", val_images=TEST_IMAGES)
        tmp = Path(tempfile.mkdtemp())
        try:
            best = finetune(weights, data.yaml_path, args.epochs, fraction=args.fraction, batch=schedule["batch"],
                            workers=schedule["workers"], project=str(tmp), name="ft", val=False, verbose=False)
            after = api.evaluate(best, data.yaml_path, split="test", val_images=TEST_IMAGES)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        loaded = api.load(weights)
        flops = api.analyse(loaded).flops()[0]
        log.append(unit, {"model": name, "budget": args.budget, "schedule": schedule, "gflops": flops / 1e9,
                          "params": api.param_count(loaded.model), "test_map50_95_before": before.map50_95,
                          "test_map50_95_after": after.map50_95, "test_map50_after": after.map50})
        print(f"{name:<10} {before.map50_95:.4f} -> {after.map50_95:.4f}", flush=True)
    print(f"{'model':<10} {'GFLOPs':>7} {'test mAP50-95 before':>21} {'after fine-tune':>16}")
    for r in log.done().values():
        if r["budget"] == args.budget and r["schedule"] == schedule:
            print(f"{r['model']:<10} {r['gflops']:>7.3f} {r['test_map50_95_before']:>21.4f} {r['test_map50_95_after']:>16.4f}")


if __name__ == "__main__":
    main()
