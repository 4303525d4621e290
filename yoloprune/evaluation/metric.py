"""mAP by pycocotools: detections in letterboxed coordinates scored against a split's COCO ground truth.

COCOeval scores at most 100 detections per image, over all areas.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from yoloprune.evaluation.data import DetSplit
from yoloprune.evaluation.inference import MAX_DET, LetterboxedImages, OnnxDetector, letterbox, predict


@dataclass
class EvalResult:
    map50_95: float
    map50: float
    images: int
    seconds: float
    score: float | None = None  # the search's objective (scores.py); mAP50-95 unless another score was asked


def coco_map(det: DetSplit, detections: list[torch.Tensor], shapes: list[tuple[int, int]],
             imgsz: int) -> tuple[float, float]:
    """(mAP50-95, mAP50) of `detections` against `det`'s ground truth, by pycocotools COCOeval."""
    from ultralytics.utils.ops import scale_boxes

    results = []
    for image_id, (d, shape) in enumerate(zip(detections, shapes)):
        if len(d) == 0:
            continue
        boxes = scale_boxes((imgsz, imgsz), d[:, :4].clone().float(), shape).numpy()
        for (x1, y1, x2, y2), score, cls in zip(boxes, d[:, 4].tolist(), d[:, 5].int().tolist()):
            results.append({"image_id": image_id, "category_id": det.class_to_category[cls],
                            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "score": score})
    return coco_score(det.coco, results)


def coco_score(gt: dict, results: list[dict]) -> tuple[float, float]:
    """(mAP50-95, mAP50) of COCO-format results against a COCO ground-truth dict."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results or not gt["annotations"]:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {**gt, "annotations": [{**a, "id": k + 1} for k, a in enumerate(gt["annotations"])]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        e = COCOeval(coco_gt, coco_dt, "bbox")
        e.params.imgIds = [im["id"] for im in gt["images"]]
        e.params.areaRng, e.params.areaRngLbl = [[0.0, 1e10]], ["all"]  # the small/medium/large passes are unused
        e.params.maxDets = [MAX_DET]
        e.evaluate()
        e.accumulate()
    precision = e.eval["precision"][:, :, :, 0, -1]  # IoU x recall x class, all areas, 100 detections
    return _mean_valid(precision), _mean_valid(precision[0])


def _mean_valid(precision: np.ndarray) -> float:
    """COCOeval's summary: mean over entries that exist (-1 marks a class without ground truth)."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else 0.0


def evaluate(model: nn.Module | OnnxDetector, det: DetSplit, imgsz: int, batch: int = 32,
             images: LetterboxedImages | None = None) -> EvalResult:
    """mAP of `model` on all images of `det` (letterboxed here unless given)."""
    t0 = time.perf_counter()
    images = images or letterbox(det.images, imgsz)
    detections = predict(model, images.pixels, batch)
    m, m50 = coco_map(det, detections, images.shapes, imgsz)
    return EvalResult(m, m50, len(det.images), time.perf_counter() - t0)
