"""The fine-tune's initial SGD rate against the schedule's length, on one pruned checkpoint (issue: final-accuracy
recipe). Each unit fine-tunes --weights for E epochs on the full train split at one lr0 (the rest of the
fine-tune schedule as shipped) and scores the result on 500 test images; the same checkpoint for every unit,
so the rates are compared paired. One line per finished unit (checkpoint x E x lr0) in
results/finetune_lr.jsonl; rerun to continue.

    python benchmarks/finetune_lr.py --weights benchmarks/runs/final_accuracy/<hdbo unit>/pruned.pt \
        --epochs 1 --lr0 0.002,0.01
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import time
from pathlib import Path

import common

from yoloprune import api
from yoloprune.default.problem import default_dataset

RUNS = Path("benchmarks/runs/finetune_lr")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", required=True, help="a pruned checkpoint (the same one for every unit)")
    parser.add_argument("--epochs", default="1", help="comma-separated schedule lengths")
    parser.add_argument("--lr0", default="0.002,0.01", help="comma-separated initial SGD rates")
    args = parser.parse_args()
    log = common.UnitLog("finetune_lr")
    data = str(default_dataset().yaml_path)
    sha = hashlib.sha256(Path(args.weights).read_bytes()).hexdigest()
    before = None
    for epochs in map(int, args.epochs.split(",")):
        for lr0 in map(float, args.lr0.split(",")):
            unit = f"{sha[:12]}/E{epochs}/lr{lr0:g}"
            if unit in log.done():
                continue
            if before is None:
                before = api.evaluate(args.weights, data, split="test", val_images=500).map50_95
            run = RUNS / unit.replace("/", "-")
            shutil.rmtree(run, ignore_errors=True)
            t0 = time.perf_counter()
            tuned = api.finetune(args.weights, data, epochs, lr0=lr0, project=str(run), name="finetune", workers=2)
            test = api.evaluate(tuned, data, split="test", val_images=500)
            log.append(unit, {"weights": args.weights, "weights_sha256": sha, "epochs": epochs, "lr0": lr0,
                              "map50_95_before": before, "final_map50_95": test.map50_95,
                              "final_map50": test.map50, "curve": common.val_curve(tuned),
                              "wall_seconds": time.perf_counter() - t0})
            print(unit, round(test.map50_95, 4), flush=True)
    for unit, r in log.done().items():
        print(f"{unit:<32} {r['map50_95_before']:.4f} -> {r['final_map50_95']:.4f}")


if __name__ == "__main__":
    main()
