"""Does BN recalibration make a candidate's score predict its fine-tuned mAP? (EagleEye)

Draws random pruned candidates of the default model on a FLOPs budget, scores each with and
without BN recalibration, fine-tunes each with the same short schedule, and prints the Spearman
rank correlation of each score with the fine-tuned mAP. One line per candidate in
results/recalibration_rank.jsonl (rerun to continue).

    python benchmarks/recalibration_rank.py [--budget 0.7] [--candidates 20]
"""

from __future__ import annotations

import argparse
import copy
import shutil
import tempfile
from pathlib import Path

import common
import numpy as np
from scipy.stats import spearmanr

from yoloprune import api
from yoloprune.budget import Budget
from yoloprune.defaults import DEFAULT_WEIGHTS, default_dataset
from yoloprune.evaluate import TrialEvaluator, evaluate
from yoloprune.finetune import finetune
from yoloprune.importance import DEFAULT_CRITERION
from yoloprune.pruner import prune

SCHEDULE = {"epochs": 1, "fraction": 0.1, "batch": 16, "workers": 0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=0.7)
    parser.add_argument("--candidates", type=int, default=20)
    args = parser.parse_args()
    log = common.UnitLog("recalibration_rank")
    data = default_dataset()
    loaded = api.load(DEFAULT_WEIGHTS)
    space = api.analyse(loaded)
    budget = Budget(space, args.budget)
    ev = TrialEvaluator(data.yaml_path, loaded.model.names, loaded.imgsz, val_images=200, calib_images=200)
    cands = budget.project(np.random.default_rng(0).random((args.candidates, len(space.groups))) * budget.max_rate)
    for k, rates in enumerate(cands):
        unit = f"{args.budget}/{k}"
        if unit in log.done():
            continue
        rate_dict = dict(zip(space.names, map(float, rates)))
        pruned = prune(loaded.model, space, rate_dict)
        stale = evaluate(copy.deepcopy(pruned), ev.search, loaded.imgsz, images=ev.search_images).map50_95
        recal = ev.score(pruned).map50_95
        tmp = Path(tempfile.mkdtemp())
        try:
            result = api.PruneResult(pruned, rate_dict, 0.0, 0.0, 0, 0, DEFAULT_CRITERION)
            path = api.save_pruned(result, loaded, tmp / "candidate.pt")
            best = finetune(path, data.yaml_path, SCHEDULE["epochs"], fraction=SCHEDULE["fraction"],
                            batch=SCHEDULE["batch"], workers=SCHEDULE["workers"], project=str(tmp), name="ft",
                            val=False, verbose=False)
            tuned = api.evaluate(best, data.yaml_path, split="test", val_images=300).map50_95
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.append(unit, {"budget": args.budget, "candidate": k, "score_stale_bn": stale, "score_recalibrated": recal,
                          "finetuned_test_map50_95": tuned, "schedule": SCHEDULE})
        print(f"candidate {k}: stale {stale:.4f}  recalibrated {recal:.4f}  fine-tuned {tuned:.4f}", flush=True)
    rows = [r for r in log.done().values() if r["budget"] == args.budget]
    tuned = [r["finetuned_test_map50_95"] for r in rows]
    rho_stale = spearmanr([r["score_stale_bn"] for r in rows], tuned).statistic
    rho_recal = spearmanr([r["score_recalibrated"] for r in rows], tuned).statistic
    print(f"{len(rows)} candidates at {args.budget:.0%} FLOPs: Spearman with fine-tuned mAP: "
          f"stale BN {rho_stale:.3f}, recalibrated BN {rho_recal:.3f}")
    common.write_result(f"recalibration_rank_{args.budget}", {"candidates": len(rows), "spearman_stale_bn": rho_stale,
                                                              "spearman_recalibrated": rho_recal, "schedule": SCHEDULE})


if __name__ == "__main__":
    main()
