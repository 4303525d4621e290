"""The trial evaluator the search calls: a fixed search slice, recalibration batches and a final-check slice."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn as nn

from yoloprune.errors import UserError
from yoloprune.evaluation.calibration import calibration_batches, recalibrate_bn
from yoloprune.evaluation.data import dataset_yaml, load_split, subset, take_slice
from yoloprune.evaluation.inference import LetterboxedImages, letterbox
from yoloprune.evaluation.metric import EvalResult, evaluate
from yoloprune.evaluation.scores import CALIB_IMAGES, SCORES, agreement, class_maps, short_recovery


class TrialEvaluator:
    """Scores candidate models on a fixed search slice, with BN recalibration; built once per search.

    The search slice comes from `split` (default val); the final-check slice is the test
    split when the data set has one, else the val images the search slice does not use. Images and
    calibration batches stay resident on `device`, where the candidates are scored.
    """

    def __init__(self, data: str | Path, model_names: dict[int, str], imgsz: int, val_images: int = 200,
                 calib_images: int = CALIB_IMAGES, calib_split: str | None = None, recalibrate: bool = True,
                 slice_seed: int | None = None, batch: int = 32, final_images: int | None = 500,
                 final_split: str | None = None, score: str = "map", reference: nn.Module | None = None,
                 device: str = "cpu") -> None:
        if score not in SCORES:
            raise UserError(f"unknown score '{score}' (choose from {', '.join(SCORES)})")
        if score == "recovered" and not recalibrate:
            raise UserError("--score recovered trains on the calibration batches: it needs BN recalibration on")
        if score == "agreement" and reference is None:
            raise ValueError("the agreement score needs the unpruned reference model")
        self.imgsz, self.batch, self.recalibrate, self.score_kind = imgsz, batch, recalibrate, score
        val = load_split(data, "val", model_names)
        idx = take_slice(val, val_images, slice_seed)
        self.search = subset(val, idx)
        self.device = device
        self.search_images = letterbox(self.search.images, imgsz)
        self.search_images.pixels = self.search_images.pixels.to(device)
        info = dataset_yaml(data) if not str(data).endswith(".json") else {}
        split = final_split or ("test" if info.get("test") else "val")
        self.final_disjoint = True
        if split == "val" and len(idx) == len(val.images):  # nothing left over: re-check on the search slice
            self.final, self.final_disjoint = self.search, False
        elif split == "val":  # the val images the search slice leaves out
            self.final = subset(val, take_slice(val, final_images, slice_seed, exclude=set(idx)))
        else:
            final = load_split(data, split, model_names)
            self.final = subset(final, take_slice(final, final_images))
        self._final_images: LetterboxedImages | None = None
        self.calibration: list[torch.Tensor] = []
        if recalibrate and not info:
            raise UserError("BN recalibration needs a dataset YAML with a train split (or turn recalibration off)")
        if recalibrate:
            c_split = calib_split or ("calib" if info.get("calib") else "train")
            self.calibration = [{k: v.to(device) for k, v in b.items()}
                                for b in calibration_batches(data, c_split, calib_images, imgsz, batch)]
        self.reference_maps = None
        if score == "agreement":
            if getattr(reference.model[-1], "end2end", False):
                raise UserError("--score agreement compares per-anchor class maps; an end-to-end head has none "
                                "(use --score map or recovered)")
            self.reference_maps = class_maps(reference, self.search_images.pixels, batch)

    def score(self, model: nn.Module) -> EvalResult:
        """Score `model` on the search slice (in place: recalibrated, and briefly trained for `recovered`).
        `score` is the objective; mAP is always reported too."""
        t0 = time.perf_counter()
        if self.score_kind == "recovered":
            short_recovery(model, self.calibration)
        if self.recalibrate:
            recalibrate_bn(model, self.calibration)
        r = evaluate(model, self.search, self.imgsz, self.batch, self.search_images)
        r.score = r.map50_95
        if self.score_kind == "agreement":
            r.score = agreement(class_maps(model, self.search_images.pixels, self.batch), self.reference_maps)
        r.seconds = time.perf_counter() - t0
        return r

    def final_check(self, model: nn.Module, recalibrate: bool = True) -> EvalResult:
        """mAP on the final-check slice, disjoint from the search slice (recalibrated first if enabled and asked)."""
        if self._final_images is None:
            self._final_images = letterbox(self.final.images, self.imgsz)
            self._final_images.pixels = self._final_images.pixels.to(self.device)
        if self.recalibrate and recalibrate:
            recalibrate_bn(model, self.calibration)
        return evaluate(model, self.final, self.imgsz, self.batch, self._final_images)
