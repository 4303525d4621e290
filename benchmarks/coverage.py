"""Per detection family shipped as YAML: prunable groups and the share of FLOPs they cover at 640 px.

    python benchmarks/coverage.py
"""

from __future__ import annotations

import time

import common
from ultralytics.nn.tasks import DetectionModel

from yoloprune import api
from yoloprune.structure.groups import analyse

FAMILIES = ["yolov3-tiny.yaml", "yolov3.yaml", "yolov5n.yaml", "yolov5l.yaml", "yolov5n-p6.yaml", "yolov6n.yaml",
            "yolov8n.yaml", "yolov8l.yaml", "yolov8n-p2.yaml", "yolov8n-p6.yaml", "yolov8n-ghost.yaml",
            "yolov9t.yaml", "yolov9c.yaml", "yolov10n.yaml", "yolo11n.yaml", "yolo11l.yaml", "yolo12n.yaml",
            "yolo26n.yaml"]


def main() -> None:
    rows = []
    for yaml in FAMILIES:
        model = DetectionModel(yaml, verbose=False).eval()
        t = time.perf_counter()
        space = analyse(model, imgsz=640)
        seconds = time.perf_counter() - t
        rows.append({"model": yaml, "groups": len(space.groups), "fixed_convs": len(space.fixed),
                     "prunable_flops_share": api.prunable_flops_share(space), "gflops": float(space.flops()[0]) / 1e9,
                     "analyse_seconds": seconds})
        r = rows[-1]
        print(f"{yaml:<22}{r['groups']:>5} groups {r['prunable_flops_share']:>7.1%} of FLOPs prunable "
              f"{r['gflops']:>7.1f} GFLOPs  analyse {seconds:.2f} s", flush=True)
    print(common.write_result("coverage", {"imgsz": 640, "rows": rows}))


if __name__ == "__main__":
    main()
