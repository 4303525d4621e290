"""Fine-tuning that keeps the pruned architecture, on Ultralytics' own trainer.

`YOLO(pruned.pt).train()` rebuilds the network from `model.yaml` and copies only tensors of
matching shape, silently undoing the pruning. `PrunedDetectionTrainer.get_model` returns the
checkpoint's own network instead (resume included), so data pipeline, augmentation, EMA,
schedulers, checkpoints and validation stay Ultralytics'. With `distill`, Ultralytics'
DistillationModel adds a feature loss against a teacher (the unpruned model) at the Detect
inputs; its checkpoints keep only the student, so the result loads like any other.
"""

from __future__ import annotations

from pathlib import Path

import torch
from ultralytics.models.yolo.detect import DetectionTrainer

from yoloprune import classic
from yoloprune.checkpoint import load_model, save_checkpoint
from yoloprune.devices import resolve_device, trainer_device
from yoloprune.errors import UserError
from yoloprune.evaluation.data import check_classes
from yoloprune.threads import torch_threads

# Recovery schedules: little warmup; the initial SGD rate by the schedule's length (default_lr0).
FINETUNE_DEFAULTS = {"optimizer": "SGD", "lrf": 0.1, "warmup_epochs": 0.5, "close_mosaic": 0,
                     "amp": False, "plots": False, "pretrained": True}


# Measured on the small converged model pruned to 50% FLOPs (benchmarks/README.md, finetune_lr.py and
# final_accuracy.py --lr0): one epoch recovers more at 0.002 (0.553 mAP50-95 against 0.497 at 0.01), ten epochs
# at 0.01 (0.695 against 0.643). Lengths in between were not measured and keep the short schedule's rate.
SHORT_LR0, LONG_LR0, LONG_SCHEDULE_EPOCHS = 0.002, 0.01, 10
LR0_HELP = (f"initial SGD rate (default {SHORT_LR0} below {LONG_SCHEDULE_EPOCHS} epochs, {LONG_LR0} from "
            f"{LONG_SCHEDULE_EPOCHS} on: measured, benchmarks/README.md)")


def default_lr0(epochs: int) -> float:
    """The initial SGD rate of a fine-tune of `epochs` epochs."""
    return LONG_LR0 if epochs >= LONG_SCHEDULE_EPOCHS else SHORT_LR0


def check_distill_weight(weight: float | None, teacher) -> None:
    """--distill-weight: a positive number, and only with a teacher."""
    if weight is None:
        return
    if teacher is None:
        raise UserError("--distill-weight weights the distillation loss: add --distill")
    if not weight > 0:
        raise UserError(f"--distill-weight must be > 0, got {weight}")


class PrunedDetectionTrainer(DetectionTrainer):
    """DetectionTrainer whose model is the loaded (pruned) network, never a rebuild from YAML."""

    def get_model(self, cfg=None, weights: torch.nn.Module | None = None, verbose: bool = True):
        if not isinstance(weights, torch.nn.Module):
            raise UserError("fine-tuning needs the pruned checkpoint's network; pass its .pt file")
        model = weights.float()
        for p in model.parameters():
            p.requires_grad_(True)
        if hasattr(self, "set_model_names_for_load"):
            model = self.set_model_names_for_load(model)
        return model


def train_args_for(weights: str | Path, data: str | Path, epochs: int, overrides: dict) -> dict:
    """The trainer overrides for training `weights` (checked: a loadable .pt, a data set with the model's classes)
    `epochs` epochs on `data`: FINETUNE_DEFAULTS and default_lr0, then `overrides` (None values ignored; `device`
    in --device syntax, default the first CUDA device when one is visible)."""
    if epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {epochs}")
    if overrides.get("lr0") is not None and not overrides["lr0"] > 0:
        raise UserError(f"--lr0 must be > 0, got {overrides['lr0']}")
    weights = Path(weights)
    if weights.suffix != ".pt":
        raise UserError(f"training needs a .pt checkpoint, got {weights}")
    model, train_args = load_model(weights)  # clear errors for a missing or foreign file
    check_classes(model.names, data)
    device = trainer_device(resolve_device(overrides.pop("device", None)))
    args = {**FINETUNE_DEFAULTS, "lr0": default_lr0(epochs), "model": str(weights), "data": str(data),
            "epochs": epochs, "device": device,
            "imgsz": overrides.pop("imgsz", None) or train_args.get("imgsz", 640), "exist_ok": False}
    args.update({k: v for k, v in overrides.items() if v is not None})
    if args.get("project"):  # Ultralytics re-roots a relative project under runs/detect/
        args["project"] = str(Path(args["project"]).resolve())
    return args


def finetune(weights: str | Path, data: str | Path, epochs: int = 10, distill: str | Path | None = None,
             distill_weight: float | None = None, **overrides) -> Path:
    """Fine-tune a pruned checkpoint, distilling from the `distill` checkpoint if given (its feature loss weighted
    by `distill_weight`, default Ultralytics' `dis`); returns the path of best.pt (same shapes as the input)."""
    check_distill_weight(distill_weight, distill)
    args = train_args_for(weights, data, epochs, overrides)
    model, _ = load_model(weights)
    old_style = classic.is_classic(model)
    classic.refuse(model, ["--distill"] if distill is not None else [])
    if distill_weight is not None:
        args["dis"] = distill_weight
    if distill is not None:
        if Path(distill).suffix != ".pt":
            raise UserError(f"--distill needs the trained .pt checkpoint of the unpruned model, got {distill}")
        if not Path(distill).is_file():
            raise UserError(f"teacher checkpoint not found: {distill}")
        teacher, _ = load_model(distill)
        if teacher.yaml.get("nc") != model.yaml.get("nc"):
            raise UserError(f"--distill {distill} predicts {teacher.yaml.get('nc')} classes, the pruned model "
                            f"{model.yaml.get('nc')}: distil from the model it was pruned from")
        args["distill_model"] = str(Path(distill).resolve())
    if old_style:
        from yoloprune.training.classic_trainer import ClassicPrunedTrainer

    trainer = (ClassicPrunedTrainer if old_style else PrunedDetectionTrainer)(overrides=args)
    with torch_threads():
        trainer.train()
    best = Path(trainer.best if Path(trainer.best).exists() else trainer.last)
    if old_style:  # the classic tools' checkpoint layout, as every classic model yoloprune writes
        tuned, train_args = load_model(best)
        save_checkpoint(tuned, best, train_args or {"imgsz": args["imgsz"]}, {"finetuned_from": str(weights)})
    return best
