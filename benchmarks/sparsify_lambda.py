"""Choosing the default L1 pull of `yoloprune sparsify`: prunability gained against mAP lost, per lambda.

For each lambda: sparsify the model for E epochs (same schedule, same data), then read out, on the
search slice of val after BN recalibration: the unpruned mAP (how much sparsifying cost) and the mAP
of uniform rates at the budget (how prunable the model became), with the share of prunable BN scales
under 0.01. One line per finished unit (model x lambda x epochs x fraction) in
results/sparsify_lambda.jsonl; rerun to continue.

    python benchmarks/sparsify_lambda.py --lambdas 0,5,10 --epochs 1 --fraction 1.0 [--lr0 0.002]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import common

from yoloprune import api
from yoloprune.default.problem import default_dataset

CONVERGED = Path(__file__).resolve().parent.parent / "weights" / "yolov8-shapes-converged.pt"
RUNS = Path("benchmarks/runs/sparsify_lambda")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", default=str(CONVERGED))
    parser.add_argument("--lambdas", default="0,0.03,0.1,0.3")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--lr0", type=float, default=0.002, help="SGD rate of the sparsify epochs")
    parser.add_argument("--budget", type=float, default=0.5, help="FLOPs kept by the uniform readout")
    args = parser.parse_args()
    log = common.UnitLog("sparsify_lambda")
    model = Path(args.weights).stem
    data = default_dataset()
    for l1 in map(float, args.lambdas.split(",")):
        unit = f"{model}/l1={l1}/lr{args.lr0}/E{args.epochs}/f{args.fraction}/b{args.budget}"
        if unit not in log.done():
            run = RUNS / unit.replace("/", "-")
            shutil.rmtree(run, ignore_errors=True)
            s = api.sparsify(args.weights, data.yaml_path, args.epochs, l1, target_flops=args.budget,
                             fraction=args.fraction, lr0=args.lr0, project=str(run.parent), name=run.name, workers=2,
                             verbose=False)
            kept = {k: s[k] for k in ("bn_scales", "prunability", "unpruned_map_kept", "wrecked")}
            log.append(unit, {"model": model, "l1": l1, "lr0": args.lr0, "epochs": args.epochs,
                              "fraction": args.fraction, "budget": args.budget, **kept})
        r = log.done()[unit]
        before, after = r["prunability"]["before"], r["prunability"]["after"]
        print(f"l1 {l1:<6} unpruned {before['unpruned_map50_95']:.4f} -> {after['unpruned_map50_95']:.4f}  uniform at "
              f"{args.budget:.0%} {before['uniform_map50_95']:.4f} -> {after['uniform_map50_95']:.4f}  small BN "
              f"{r['bn_scales']['after']['share_below_small']:.1%}{'  WRECKED' if r['wrecked'] else ''}", flush=True)


if __name__ == "__main__":
    main()
