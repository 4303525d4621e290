"""Train the bundled default detector on the synthetic shapes data (reproducible, CPU or GPU).

    python scripts/train_default.py [--epochs 24] [--bn-l1 0.01] [--device cpu|0]

The committed weights came from `--device 0` (one GPU, 6 min); on 2 CPU cores the same recipe
takes about two hours and gives a close but not bit-identical model.

Writes weights/yolov8w-shapes.pt (the EMA weights of the last epoch, fp16) unless --out names
another file. --cfg trains another model YAML with the same recipe (used to choose the width).
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

import torch  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402

from yoloprune.defaults import DEFAULT_IMGSZ, DEFAULT_MODEL_YAML, DEFAULT_WEIGHTS, default_dataset  # noqa: E402


class SlimmingTrainer(DetectionTrainer):
    """Ultralytics' detection trainer plus an L1 penalty on BatchNorm scales (network slimming).

    The penalty's subgradient is added once per optimizer step (after Ultralytics' gradient
    accumulation, on its batch-size-scaled loss, amp off), so its strength is tied to this recipe's
    batch 16 / nbs 64. Channels the task does not need drift towards zero scale: the model becomes redundant the way long-trained large models
    are, which is the regime where scoring pruned candidates without retraining works.
    """

    def __init__(self, *args, bn_l1: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bn_l1 = bn_l1

    def optimizer_step(self) -> None:
        if self.bn_l1:
            for m in self.model.modules():
                if isinstance(m, torch.nn.BatchNorm2d) and m.weight.grad is not None:
                    m.weight.grad.add_(self.bn_l1 * torch.sign(m.weight.detach()))
        super().optimizer_step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--device", default="cpu", help="cpu, or a CUDA index such as 0")
    parser.add_argument("--workers", type=int, default=2, help="data loader processes")
    parser.add_argument("--cfg", default=str(DEFAULT_MODEL_YAML), help="model YAML")
    parser.add_argument("--out", default=str(DEFAULT_WEIGHTS), help="where the trained weights go")
    parser.add_argument("--bn-l1", type=float, default=0.01, help="L1 penalty on BatchNorm scales")
    parser.add_argument("--project", default="runs/train-default")
    args = parser.parse_args()
    data = default_dataset()
    model = YOLO(args.cfg)
    model.train(trainer=functools.partial(SlimmingTrainer, bn_l1=args.bn_l1), data=str(data.yaml_path), imgsz=DEFAULT_IMGSZ, epochs=args.epochs, batch=16,
                workers=args.workers, device=args.device, seed=0, deterministic=True, close_mosaic=4,
                project=str(Path(args.project).resolve()), name="exp", exist_ok=True, save_period=5,
                amp=False, plots=False)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(model.trainer.last, args.out)


if __name__ == "__main__":
    main()
