"""Train the bundled default detector on the synthetic shapes data (CPU, reproducible).

    python scripts/train_default.py [--epochs 22]

Writes weights/yolov8w-shapes.pt (the EMA weights of the last epoch, fp16).
"""

from __future__ import annotations

import argparse
import os
import shutil

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

from ultralytics import YOLO  # noqa: E402

from yoloprune.defaults import DEFAULT_IMGSZ, DEFAULT_MODEL_YAML, DEFAULT_WEIGHTS, default_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=22)
    parser.add_argument("--project", default="runs/train-default")
    args = parser.parse_args()
    data = default_dataset()
    model = YOLO(str(DEFAULT_MODEL_YAML))
    model.train(data=str(data.yaml_path), imgsz=DEFAULT_IMGSZ, epochs=args.epochs, batch=16,
                workers=2, device="cpu", seed=0, deterministic=True, close_mosaic=4,
                project=args.project, name="exp", exist_ok=True, save_period=4, amp=False)
    DEFAULT_WEIGHTS.parent.mkdir(exist_ok=True)
    shutil.copy(model.trainer.last, DEFAULT_WEIGHTS)


if __name__ == "__main__":
    main()
