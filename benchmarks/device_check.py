"""GPU check (issue: every step on a CUDA device), prepared to run on a GPU machine in one short call:

    python benchmarks/device_check.py --device 0            # about 5 minutes on one H200 and 16 cores

Writes results/device_check.json with
- the same 5 candidates of the default problem (uniform rates and 4 projected Sobol points at 50% FLOPs),
  each pruned, BN-recalibrated and scored on the CPU and on the device: mAP50-95 agreement (target 0.005);
- seconds per trial on the device and on the CPU (all cores), for the default model and for a
  yolov5l-sized model at 640 px (yolov5lu.yaml, random init: timing only, its mAP is 0);
- one fine-tune epoch of the uniform candidate on the device: seconds, and its final-check mAP.
Ray rows are left out: the device machine reaches no package registry, and the ray wheel (79 MB) is more
than the 64 MiB a run may carry. `--device cpu` runs the same script on the CPU alone (a dry run).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import common
import numpy as np
import torch

from yoloprune import api
from yoloprune.checkpoint import load, save_checkpoint, save_pruned
from yoloprune.default.problem import DEFAULT_WEIGHTS, default_dataset
from yoloprune.devices import resolve_device
from yoloprune.search.budget import Budget
from yoloprune.search.executors import CandidateScorer, ScorerSpec
from yoloprune.structure.groups import analyse
from yoloprune.structure.pruner import prune_by_rates

BUDGET = 0.5


def candidates(space, n: int = 5) -> np.ndarray:
    """Uniform rates and n - 1 scrambled Sobol points, all projected onto the budget."""
    budget = Budget(space, BUDGET)
    sobol = torch.quasirandom.SobolEngine(len(space.groups), scramble=True, seed=0).draw(n - 1).double().numpy()
    return budget.project(np.vstack([np.zeros((1, len(space.groups))), sobol * budget.max_rate]))


def score(weights: str, data: str, loaded, space, rates: np.ndarray, device: str, val_images: int) -> dict:
    """Score every row of `rates` on `device` (evaluator built there, images resident); mAPs and seconds."""
    spec = ScorerSpec(weights, data, loaded.imgsz, 8, "bn", val_images, 32, True, "map", 0, device)
    scorer = CandidateScorer(spec, loaded, space)
    out = []
    for r in rates:
        t0 = time.perf_counter()
        result = scorer(dict(zip(space.names, map(float, r))))
        out.append({"map50_95": result["map50_95"], "trial_seconds": time.perf_counter() - t0})
    return {"maps": [o["map50_95"] for o in out], "seconds_per_trial": float(np.median([o["trial_seconds"]
                                                                                        for o in out]))}


def large_model(data, tmp: Path) -> Path:
    """yolov5lu.yaml with the default data's classes, random init, saved as a checkpoint trained at 640 px."""
    from ultralytics.nn.tasks import DetectionModel

    names = load(DEFAULT_WEIGHTS).model.names
    torch.manual_seed(0)
    model = DetectionModel("yolov5lu.yaml", nc=len(names), verbose=False)
    model.names = names
    return save_checkpoint(model.eval(), tmp / "yolov5lu-shapes.pt", {"imgsz": 640}, {})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default=None, help="the device under test (default: the first CUDA device)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    data = str(default_dataset().yaml_path)
    payload = {"device": device, "device_name": torch.cuda.get_device_name(device) if device != "cpu" else "cpu",
               "cpu_threads": torch.get_num_threads(), "budget": BUDGET}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = {}
        for label, weights, val_images in (("default", str(DEFAULT_WEIGHTS), 200),
                                           ("yolov5lu-640", None, 50)):
            weights = weights or str(large_model(data, tmp))
            loaded = load(weights)
            space = analyse(loaded.model, loaded.imgsz)
            rates = candidates(space, 5 if label == "default" else 2)
            cpu = score(weights, data, loaded, space, rates, "cpu", val_images)
            dev = score(weights, data, loaded, space, rates, device, val_images)
            rows[label] = {"groups": len(space.groups), "imgsz": loaded.imgsz, "val_images": val_images,
                           "cpu": cpu, "device": dev, "speedup": cpu["seconds_per_trial"] / dev["seconds_per_trial"],
                           "max_map_difference": float(np.max(np.abs(np.subtract(cpu["maps"], dev["maps"]))))}
            print(label, rows[label], flush=True)
        payload["trials"] = rows

        loaded = load(DEFAULT_WEIGHTS)
        space = analyse(loaded.model, loaded.imgsz)
        uniform = dict(zip(space.names, map(float, candidates(space, 1)[0])))
        pruned = save_pruned(prune_by_rates(loaded.model, space, uniform).model, loaded, tmp / "uniform.pt", {})
        t0 = time.perf_counter()
        tuned = api.finetune(pruned, data, 1, device=args.device, project=str(tmp / "ft"), name="exp",
                             workers=min(8, os.cpu_count() or 1), verbose=False)
        seconds = time.perf_counter() - t0
        test = api.evaluate(tuned, data, split="test", val_images=500, device=args.device)
        payload["finetune_epoch"] = {"seconds": seconds, "final_check_map50_95": test.map50_95}
        print("finetune", payload["finetune_epoch"], flush=True)
    print(common.write_result("device_check", payload))


if __name__ == "__main__":
    main()
