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
- Detect's grids emptied on loading and before each save (a filled 5-D grid breaks the channels-last
  move that Ultralytics' trainer and loader make).
"""

from __future__ import annotations

import importlib
import importlib.util
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
from yoloprune.errors import UserError
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

    def get_model(self, cfg=None, weights: torch.nn.Module | None = None, verbose: bool = True):
        model = super().get_model(cfg, weights, verbose)
        classic.empty_grids(model)  # the trainer moves the model to channels-last on CUDA
        return model

    def set_model_attributes(self) -> None:
        model = unwrap_model(self.model)
        model.hyp = dict(getattr(model, "hyp", None) or scaled_hyp(model, self.data["nc"], self.args.imgsz))
        model.nc, model.names = self.data["nc"], self.data["names"]
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
        classic.empty_grids(unwrap_model(self.ema.ema))
        return super().save_model()


def classic_folder(model: nn.Module) -> Path:
    """The folder holding the classic code of `model` (a clone, or the yolov5 package)."""
    return Path(sys.modules[type(model).__module__].__file__).resolve().parents[1]


def scaled_hyp(model: nn.Module, nc: int, imgsz: int) -> dict:
    """The classic train.py's default hyperparameters, scaled as it scales them to the detection layers, classes
    and image size (a checkpoint of the classic train.py carries its own, already scaled, as `model.hyp`)."""
    path = classic_folder(model) / CLASSIC_HYP
    if not path.is_file():
        raise UserError(f"{path} not found: the classic code is older than release 6.0 (use a newer clone)")
    hyp, layers = yaml.safe_load(path.read_text()), model.model[-1].nl
    hyp["box"] *= 3 / layers
    hyp["cls"] *= nc / 80 * 3 / layers
    hyp["obj"] *= (imgsz / 640) ** 2 * 3 / layers
    hyp["label_smoothing"] = 0.0
    return hyp


def classic_loss_module(model: nn.Module):
    """`utils.loss` of the classic code `model` comes from: the yolov5 package's own (`yolov5.utils.loss`) when the
    code is the package, whatever name its classes were pickled under, else the clone's."""
    spec = importlib.util.find_spec("yolov5")
    package = spec is not None and spec.origin is not None and \
        Path(spec.origin).resolve().parent == classic_folder(model)
    return importlib.import_module("yolov5.utils.loss" if package else "utils.loss")
