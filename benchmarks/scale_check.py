"""Scale check: layers, prune, one timed trial and bench on a random-init YOLOv5l at 640 px.

    python benchmarks/scale_check.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (environment for Ultralytics)
from ultralytics.nn.tasks import DetectionModel

from yoloprune import api
from yoloprune.checkpoint import save_checkpoint
from yoloprune.default.problem import default_dataset
from yoloprune.evaluation.evaluator import TrialEvaluator
from yoloprune.latency.bench import benchmark
from yoloprune.structure.pruner import prune


def main() -> None:
    data = default_dataset()
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "yolov5l-random.pt"
        save_checkpoint(DetectionModel("yolov5lu.yaml", nc=10, verbose=False), weights, {"imgsz": 640}, {})
        t = time.perf_counter()
        loaded = api.load(weights)
        space = api.analyse(loaded)
        layers_s = time.perf_counter() - t
        rates = api.uniform_rates(space, 0.3)
        t = time.perf_counter()
        pruned = prune(loaded.model, space, rates)
        prune_s = time.perf_counter() - t
        evaluator = TrialEvaluator(data.yaml_path, loaded.model.names, 640, val_images=20, calib_images=32)
        t = time.perf_counter()
        evaluator.score(pruned)
        trial_s = time.perf_counter() - t
        result = api.prune(loaded, rates, space=space)
        out = api.save_pruned(result, loaded, Path(tmp) / "pruned.pt")
        models = benchmark([str(weights), str(out)], 640, (1, 2), runs=5, warmup=1)
    payload = {"groups": len(space.groups), "prunable_flops_share": api.prunable_flops_share(space),
               "gflops": float(space.flops()[0]) / 1e9, "analyse_seconds": layers_s, "prune_seconds": prune_s,
               "trial_seconds_20_val_32_calib_images": trial_s,
               "bench": [{"weights": Path(m.weights).name, "gflops": m.flops / 1e9, "latency": m.latency} for m in models]}
    print(f"yolov5l @640: {len(space.groups)} groups, {payload['gflops']:.1f} GFLOPs, "
          f"{payload['prunable_flops_share']:.1%} prunable; analyse {layers_s:.2f} s, prune {prune_s:.2f} s, "
          f"one trial (20 val + 32 calib images) {trial_s:.1f} s")
    for m in payload["bench"]:
        print(f"  {m['weights']}: {m['gflops']:.1f} GFLOPs, ORT 1T {m['latency'][1]['p50_ms']:.0f} ms, "
              f"2T {m['latency'][2]['p50_ms']:.0f} ms")
    print(common.write_result("scale_check", payload))


if __name__ == "__main__":
    main()
