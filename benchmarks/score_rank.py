"""Which candidate score predicts the mAP a candidate reaches after fine-tuning?

Draws random pruned candidates of the default model on a FLOPs budget and scores each by every
score the search offers, plus mAP with stale BatchNorm statistics (no recalibration, the
EagleEye baseline); then fine-tunes each with the same schedule (Ultralytics' trainer) and
prints the Spearman rank correlation of each score with the fine-tuned test mAP, and the
cost of each score per candidate. One line per candidate in results/score_rank.jsonl (rerun
to continue; a finished candidate that lacks a newer score variant is scored again, not fine-tuned
again); a summary per budget in results/score_rank_<budget>.json.

    python benchmarks/score_rank.py --budget 0.3 [--candidates 20] [--spread 0.1] [--epochs 1 --fraction 0.25]
"""

from __future__ import annotations

import argparse
import copy
import shutil
import tempfile
import time
from pathlib import Path

import common
import numpy as np
from scipy.stats import spearmanr

from yoloprune import api
from yoloprune.default.problem import DEFAULT_WEIGHTS, default_dataset
from yoloprune.evaluation.evaluator import TrialEvaluator
from yoloprune.evaluation.metric import evaluate
from yoloprune.evaluation.scores import SCORES
from yoloprune.search.budget import Budget
from yoloprune.structure.importance import DEFAULT_CRITERION
from yoloprune.structure.pruner import prune
from yoloprune.training.finetune import finetune

TEST_IMAGES = 300
# every search score, and `map` with BN recalibrated on 64 or 32 instead of 200 images (cheaper trials)
VARIANTS = {**{s: {"score": s} for s in SCORES}, "map_calib64": {"score": "map", "calib_images": 64},
            "map_calib32": {"score": "map", "calib_images": 32}}
PROVENANCE = ("unit", "date", "command", "machine", "cpus", "versions")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--fraction", type=float, default=0.25, help="share of the train split per epoch")
    parser.add_argument("--spread", type=float, default=0.1,
                        help="std of the rate perturbations around the uniform point (0: uniform draws over the box)")
    args = parser.parse_args()
    schedule = {"epochs": args.epochs, "fraction": args.fraction, "batch": 16, "workers": 2}
    log = common.UnitLog("score_rank")
    data = default_dataset()
    loaded = api.load(DEFAULT_WEIGHTS)
    space = api.analyse(loaded)
    budget = Budget(space, args.budget)
    evaluators: dict[str, TrialEvaluator] = {}  # built once, on the first unit still to run
    cands = candidates(budget, len(space.groups), args.candidates, args.spread)
    for k, rates in enumerate(cands):
        unit = f"{args.budget}/{args.spread}/{k}/{args.epochs}/{args.fraction}"
        finished = log.done().get(unit)
        todo = [n for n in ("stale_bn", *VARIANTS) if finished is None or f"score_{n}" not in finished]
        if not todo:
            continue
        evaluators = evaluators or {name: TrialEvaluator(data.yaml_path, loaded.model.names, loaded.imgsz,
                                                         reference=loaded.model, **kw) for name, kw in VARIANTS.items()}
        rate_dict = dict(zip(space.names, map(float, rates)))
        pruned = prune(loaded.model, space, rate_dict)
        row, seconds = score(pruned, todo, evaluators, loaded.imgsz)
        if finished is not None:  # fine-tuned already: add the new scores only
            kept = {key: v for key, v in finished.items() if key not in PROVENANCE}
            log.append(unit, {**kept, **row, "score_seconds": {**finished["score_seconds"], **seconds}})
            print(f"candidate {k}: rescored " + "  ".join(f"{n[6:]} {v:.4f}" for n, v in row.items()), flush=True)
            continue
        tmp = Path(tempfile.mkdtemp())
        try:
            result = api.PruneResult(pruned, rate_dict, 0.0, 0.0, 0, 0, DEFAULT_CRITERION)
            path = api.save_pruned(result, loaded, tmp / "candidate.pt")
            best = finetune(path, data.yaml_path, args.epochs, fraction=args.fraction, batch=schedule["batch"],
                            workers=schedule["workers"], project=str(tmp), name="ft", val=False, verbose=False)
            tuned = api.evaluate(best, data.yaml_path, split="test", val_images=TEST_IMAGES).map50_95
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.append(unit, {"budget": args.budget, "spread": args.spread, "candidate": k, **row, "score_seconds": seconds,
                          "finetuned_test_map50_95": tuned, "schedule": schedule})
        print(f"candidate {k}: " + "  ".join(f"{n[6:]} {v:.4f}" for n, v in row.items()) + f"  fine-tuned {tuned:.4f}",
              flush=True)
    summarise(log, args.budget, args.spread, schedule)


def score(pruned, names: list[str], evaluators: dict[str, TrialEvaluator], imgsz: int) -> tuple[dict, dict]:
    """Each named score of a pruned model (`stale_bn`: mAP on the search slice, BN statistics as pruned) and
    its cost in seconds."""
    row, seconds = {}, {}
    for name in names:
        if name == "stale_bn":
            search, t = evaluators["map"], time.perf_counter()
            row["score_stale_bn"] = evaluate(copy.deepcopy(pruned), search.search, imgsz,
                                             images=search.search_images).map50_95
            seconds[name] = time.perf_counter() - t
        else:
            r = evaluators[name].score(copy.deepcopy(pruned))
            row[f"score_{name}"], seconds[name] = r.score, r.seconds
    return row, seconds


def candidates(budget: Budget, groups: int, n: int, spread: float) -> np.ndarray:
    """Random candidates on the budget: uniform draws over the box (spread 0), or Gaussian perturbations of the
    uniform point (the region a search explores after its initial design; random draws over the box at a deep
    budget all collapse beyond what a short fine-tune recovers)."""
    rng = np.random.default_rng(0)
    if spread == 0:
        return budget.project(rng.random((n, groups)) * budget.max_rate)
    centre = budget.project(np.zeros((1, groups)))
    return budget.project(np.clip(centre + spread * rng.standard_normal((n, groups)), 0.0, budget.max_rate))


def summarise(log: common.UnitLog, budget: float, spread: float, schedule: dict) -> None:
    rows = [r for r in log.done().values()
            if r["budget"] == budget and r["spread"] == spread and r["schedule"] == schedule]
    tuned = [r["finetuned_test_map50_95"] for r in rows]
    table = {}
    print(f"{len(rows)} candidates at {budget:.0%} FLOPs, fine-tuned {schedule['epochs']} epoch(s) on "
          f"{schedule['fraction']:.0%} of train; test mAP50-95 {np.mean(tuned):.3f} +- {np.std(tuned):.3f}")
    print(f"{'score':<12} {'Spearman':>9} {'s/candidate (median)':>21}")
    for name in [n for n in ("stale_bn", *VARIANTS) if all(f"score_{n}" in r for r in rows)]:
        rho = float(spearmanr([r[f"score_{name}"] for r in rows], tuned).statistic)
        cost = float(np.median([r["score_seconds"][name] for r in rows]))
        table[name] = {"spearman": rho, "seconds_per_candidate": cost}
        print(f"{name:<12} {rho:>9.3f} {cost:>21.2f}")
    common.write_result(f"score_rank_{budget}", {"candidates": len(rows), "spread": spread, "schedule": schedule,
                                                 "scores": table,
                                                 "finetuned_mean": float(np.mean(tuned))})


if __name__ == "__main__":
    main()
