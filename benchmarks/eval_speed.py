"""Trial evaluation time vs `YOLO(model).val()` on the same slice and image size, side by side.

A trial is timed with BN recalibration on each of several calibration sizes, and without.

    python benchmarks/eval_speed.py [--images 200] [--repeats 3] [--calib 200,64,32]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import common  # noqa: F401
import numpy as np
import yaml

from yoloprune import api
from yoloprune.default.problem import DEFAULT_WEIGHTS, default_dataset
from yoloprune.evaluation.evaluator import TrialEvaluator
from yoloprune.evaluation.metric import evaluate
from yoloprune.threads import torch_threads


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calib", default="200,64,32", help="calibration sizes to time")
    args = parser.parse_args()
    from ultralytics import YOLO

    data = default_dataset()
    loaded = api.load(DEFAULT_WEIGHTS)
    sizes = [int(n) for n in args.calib.split(",")]
    evs = {n: TrialEvaluator(data.yaml_path, loaded.model.names, loaded.imgsz, val_images=args.images, calib_images=n)
           for n in sizes}
    ev = evs[sizes[0]]
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "slice.txt"
        listing.write_text("\n".join(str(p) for p in ev.search.images))
        desc = yaml.safe_load(data.yaml_path.read_text())
        desc["val"] = str(listing)
        (Path(tmp) / "slice.yaml").write_text(yaml.safe_dump(desc))
        yolo = YOLO(str(DEFAULT_WEIGHTS))
        times = {**{f"yoloprune_trial_with_recalibration_{n}": [] for n in sizes},
                 "yoloprune_trial_no_recalibration": [], "ultralytics_val": []}
        maps = {}
        for _ in range(args.repeats):  # alternate so drift hits all alike
            for n, e in evs.items():
                t = time.perf_counter()
                maps[f"yoloprune_recalibrated_{n}"] = e.score(copy.deepcopy(loaded.model)).map50_95
                times[f"yoloprune_trial_with_recalibration_{n}"].append(time.perf_counter() - t)
            t = time.perf_counter()
            r0 = evaluate(copy.deepcopy(loaded.model), ev.search, loaded.imgsz, images=ev.search_images)
            times["yoloprune_trial_no_recalibration"].append(time.perf_counter() - t)
            t = time.perf_counter()
            with torch_threads():  # let Ultralytics use its own thread setting, then restore ours
                m = yolo.val(data=str(Path(tmp) / "slice.yaml"), imgsz=loaded.imgsz, batch=32, rect=False,
                             conf=0.001, iou=0.7, max_det=100, plots=False, device="cpu", verbose=False)
            times["ultralytics_val"].append(time.perf_counter() - t)
            maps.update({"yoloprune": r0.map50_95, "ultralytics": float(m.box.map)})
    med = {k: float(np.median(v)) for k, v in times.items()}
    ratio = {k: med[k] / med["ultralytics_val"] for k in med}
    for k in med:
        print(f"{k:<44} {med[k]:6.2f} s  ({ratio[k]:.2f}x ultralytics val)")
    print("mAP50-95:", {k: round(v, 4) for k, v in maps.items()})
    print(common.write_result("eval_speed", {"images": args.images, "imgsz": loaded.imgsz, "median_seconds": med,
                                             "ratio_to_ultralytics_val": ratio, "map50_95": maps,
                                             "calib_images": sizes}))


if __name__ == "__main__":
    main()
