"""Train the bundled default detector on the synthetic shapes data (reproducible, CPU or GPU).

    python scripts/train_default.py [--epochs 24] [--bn-l1 0.01] [--device cpu|0]

Network slimming from scratch: yoloprune's sparsify stage (an L1 pull on the BatchNorm scales of
the prunable channels) on a randomly initialised model, with a from-scratch schedule (Ultralytics'
automatic optimiser, 3 warmup epochs, mosaic closed for the last 4). The committed weights came from
`--device 0` (one GPU, 6 min) with an earlier version of this script that pulled on every BatchNorm,
fixed ones included; on 2 CPU cores the recipe takes about two hours and gives a close but not
bit-identical model.

Writes yoloprune/default/weights/yolov8w-shapes.pt (the EMA weights of the last epoch, fp16) unless --out
names another file. --cfg trains another model YAML with the same recipe (used to choose the width).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

from ultralytics.nn.tasks import DetectionModel  # noqa: E402

from yoloprune.checkpoint import save_checkpoint  # noqa: E402
from yoloprune.default.problem import DEFAULT_IMGSZ, DEFAULT_MODEL_YAML, DEFAULT_WEIGHTS, default_dataset  # noqa: E402
from yoloprune.structure.groups import analyse  # noqa: E402
from yoloprune.training.sparsify import prunable_bn_masks, sparsify  # noqa: E402

FROM_SCRATCH = {"optimizer": "auto", "lr0": 0.01, "lrf": 0.01, "warmup_epochs": 3.0, "close_mosaic": 4,
                "pretrained": False, "batch": 16, "seed": 0, "deterministic": True, "save_period": 5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--device", default="cpu", help="cpu, or a CUDA index such as 0")
    parser.add_argument("--workers", type=int, default=2, help="data loader processes")
    parser.add_argument("--cfg", default=str(DEFAULT_MODEL_YAML), help="model YAML")
    parser.add_argument("--out", default=str(DEFAULT_WEIGHTS), help="where the trained weights go")
    parser.add_argument("--bn-l1", type=float, default=1.0,
                        help="L1 strength on the prunable BatchNorm scales (proximal: lr x L1 per step; 1.0 moves a "
                             "scale about as far per step as the earlier 0.01 subgradient did under AdamW, not "
                             "re-measured)")
    parser.add_argument("--project", default="runs/train-default")
    args = parser.parse_args()
    data = default_dataset()
    model = DetectionModel(args.cfg, verbose=False)
    init = Path(args.project).resolve() / "init.pt"
    save_checkpoint(model, init, {"imgsz": DEFAULT_IMGSZ}, {"init": args.cfg})
    masks = prunable_bn_masks(analyse(model.eval(), DEFAULT_IMGSZ))
    last = sparsify(init, data.yaml_path, args.epochs, masks, args.bn_l1, **FROM_SCRATCH, imgsz=DEFAULT_IMGSZ,
                    workers=args.workers, device=args.device, project=str(Path(args.project).resolve()),
                    name="exp", exist_ok=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(last, args.out)


if __name__ == "__main__":
    main()
