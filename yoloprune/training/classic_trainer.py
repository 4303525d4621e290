"""Fine-tuning a pruned classic YOLOv5 model on Ultralytics' trainer, with the classic loss.

The classic train.py rebuilds the network from its YAML and keeps only tensors of matching shape,
undoing the pruning (as Ultralytics' own `train()` would). So a classic model trains here: Ultralytics'
trainer (data pipeline, augmentation, EMA, schedule, checkpoints, resume) around the pruned network,
with the classic repository's own loss (`utils.loss.ComputeLoss`, its hyperparameters from
`data/hyps/hyp.scratch-low.yaml` scaled as its train.py scales them), and validation through the
output adapter evaluation uses. What the trainer expects of an Ultralytics model is supplied here:
- the training step calls `model(batch)` for (loss, items): `LossView` answers it; its one child is
  named `module`, which Ultralytics' `unwrap_model` strips, so EMA, checkpoints and validation see,
  and pickle, the classic network alone;
- a `criterion` attribute, `args` as a plain dict, and no `set_head_attr` call;
- Detect's grids emptied before each save (a filled 5-D grid breaks the channels-last move that
  Ultralytics' loader makes on reload).
"""

from __future__ import annotations

import importlib
import sys
from copy import copy
from pathlib import Path

import torch
import torch.nn as nn
import yaml
from ultralytics.engine.trainer import BaseTrainer
from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.utils.torch_utils import unwrap_model

from yoloprune import classic
from yoloprune.training.finetune import PrunedDetectionTrainer

LOSS_NAMES = ("box_loss", "obj_loss", "cls_loss")
CLASSIC_HYP = "data/hyps/hyp.scratch-low.yaml"  # the classic train.py's default, beside its models/ folder


class LossView(nn.Module):
    """The trainer's view of a classic network: `view(batch)` is (loss, items); images pass straight through."""

    def __init__(self, module: nn.Module, loss) -> None:
        super().__init__()
        self.module = module
        self.classic_loss = loss

    def forward(self, x, *args, **kwargs):
        if isinstance(x, dict):
            return self.loss(x, self.module(x["img"]))
        return self.module(x, *args, **kwargs)

    def loss(self, batch: dict, preds):
        return self.classic_loss(preds, batch)


class ClassicValidator(DetectionValidator):
    """Ultralytics' detection validator on the classic output (objectness x class probability as the score)."""

    def get_model(self, model, trainer=None):
        if trainer is None:
            return super().get_model(model, trainer)
        return LossView(trainer.ema.ema, trainer.classic_loss)

    def postprocess(self, preds):
        return super().postprocess(classic.as_ultralytics_output(preds))


class ClassicPrunedTrainer(PrunedDetectionTrainer):
    """PrunedDetectionTrainer for a classic YOLOv5 network, trained with the classic loss."""

    def set_model_attributes(self) -> None:
        model = unwrap_model(self.model)
        head, nc = model.model[-1], self.data["nc"]
        hyp = classic_hyp(model)
        hyp["box"] *= 3 / head.nl  # the classic train.py's scaling to layers, classes and image size
        hyp["cls"] *= nc / 80 * 3 / head.nl
        hyp["obj"] *= (self.args.imgsz / 640) ** 2 * 3 / head.nl
        hyp["label_smoothing"] = 0.0
        model.nc, model.names, model.hyp = nc, self.data["names"], hyp
        model.args = dict(vars(self.args))  # plain types in the checkpoint
        model.criterion = None  # the trainer asks whether the criterion has an `update`
        self._loss = None

    def _build_train_pipeline(self):
        BaseTrainer._build_train_pipeline(self)  # the detection trainer's own step sets an Ultralytics head's max_det

    def _setup_train(self):
        super()._setup_train()
        self.model = LossView(self.model, self.classic_loss)

    def classic_loss(self, preds, batch: dict):
        """(loss x batch size, {box, obj, cls}) of the classic loss on raw head outputs."""
        raw = preds[1] if isinstance(preds, tuple) else preds  # eval mode returns (decoded, raw)
        if self._loss is None:
            self._loss = classic_loss_module(unwrap_model(self.model)).ComputeLoss(unwrap_model(self.model))
        targets = torch.cat((batch["batch_idx"].view(-1, 1), batch["cls"].view(-1, 1), batch["bboxes"]), 1)
        loss, items = self._loss(raw, targets.float().to(raw[0].device))
        return loss, dict(zip(LOSS_NAMES, items))

    def get_validator(self):
        self.loss_names = LOSS_NAMES
        return ClassicValidator(self.test_loader, save_dir=self.save_dir, args=copy(self.args),
                                _callbacks=self.callbacks)

    def save_model(self):
        empty_grids(unwrap_model(self.ema.ema))
        return super().save_model()


def classic_folder(model: nn.Module) -> Path:
    """The folder holding the classic code of `model` (a clone, or the yolov5 package)."""
    return Path(sys.modules[type(model).__module__].__file__).resolve().parents[1]


def classic_hyp(model: nn.Module) -> dict:
    """The classic train.py's default hyperparameters, from the code `model` comes from."""
    return yaml.safe_load((classic_folder(model) / CLASSIC_HYP).read_text())


def classic_loss_module(model: nn.Module):
    """`utils.loss` of the classic code `model` comes from (`yolov5.utils.loss` for the package's own classes)."""
    root = type(model).__module__.split(".")[0]
    return importlib.import_module("utils.loss" if root == "models" else f"{root}.utils.loss")


def empty_grids(model: nn.Module) -> None:
    """Reset Detect's cached anchor grids (rebuilt on the next forward)."""
    head = model.model[-1]
    head.grid = [torch.empty(0) for _ in range(head.nl)]
    head.anchor_grid = [torch.empty(0) for _ in range(head.nl)]
