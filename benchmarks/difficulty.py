"""Is the default problem a fair test for search? (DESIGN: at 50% FLOPs, uniform rates after BN
recalibration keep 20-80% of the unpruned mAP50-95, and 20 random candidates on that budget
spread by >= 3 mAP points.) Also the issue-2 check: a uniform 50% channel cut costs >= 10 points.

    python benchmarks/difficulty.py [--budget 0.5] [--candidates 20]
"""

from __future__ import annotations

import argparse
import copy

import common  # noqa: F401
import numpy as np

from yoloprune import api
from yoloprune.default.problem import DEFAULT_WEIGHTS, default_dataset
from yoloprune.evaluation.evaluator import TrialEvaluator
from yoloprune.search.budget import Budget
from yoloprune.structure.importance import DEFAULT_CRITERION
from yoloprune.structure.pruner import prune


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budgets", default="0.5,0.7,0.85")
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--criterion", default=DEFAULT_CRITERION, help="channel importance criterion")
    parser.add_argument("--name", default="difficulty", help="result file name under benchmarks/results/")
    args = parser.parse_args()
    data = default_dataset()
    loaded = api.load(args.weights)
    space = api.analyse(loaded)
    ev = TrialEvaluator(data.yaml_path, loaded.model.names, loaded.imgsz, val_images=200, calib_images=200)
    base = ev.score(copy.deepcopy(loaded.model)).map50_95
    half_cut = ev.score(prune(loaded.model, space, api.uniform_rates(space, 0.5), args.criterion)).map50_95
    print(f"unpruned (recalibrated) {base:.4f}; uniform 50% channel cut {half_cut:.4f} "
          f"(-{100 * (base - half_cut):.1f} points)")
    per_budget = {}
    for b in (float(x) for x in args.budgets.split(",")):
        budget = Budget(space, b)
        uni = budget.project(np.zeros((1, len(space.groups))))[0]
        uni_map = ev.score(prune(loaded.model, space, dict(zip(space.names, uni)), args.criterion)).map50_95
        rng = np.random.default_rng(0)
        cands = budget.project(rng.random((args.candidates, len(space.groups))) * budget.max_rate)
        maps = [ev.score(prune(loaded.model, space, dict(zip(space.names, c)), args.criterion)).map50_95 for c in cands]
        per_budget[str(b)] = {"uniform_map50_95": uni_map, "uniform_share_of_unpruned": uni_map / base,
                              "random_maps": maps, "random_std_points": 100 * float(np.std(maps)),
                              "random_best": max(maps)}
        print(f"budget {b:.0%} FLOPs: uniform keeps {uni_map / base:.0%} of unpruned ({uni_map:.4f}); "
              f"{args.candidates} random: mean {np.mean(maps):.4f}, std {100 * np.std(maps):.2f} points, "
              f"best {max(maps):.4f}")
    print(common.write_result(args.name, {"weights": args.weights, "criterion": args.criterion, "unpruned_map50_95": base, "uniform_half_channel_cut_map50_95": half_cut,
                                             "budgets": per_budget, "val_images": 200, "calib_images": 200}))


if __name__ == "__main__":
    main()
