"""mAP by pycocotools on a validation slice, and the trial evaluator the search calls.

Images are read and letterboxed once (uint8, in memory) the way Ultralytics' validator does
with rect=False; inference runs on a Conv+BN-fused copy; NMS is Ultralytics' own (on
torchvision's kernel); COCOeval scores at most 100 detections per image.
The trial evaluator also recalibrates BatchNorm statistics of each candidate on fixed
augmented training batches before scoring (EagleEye): a pruned model's stale statistics
say little about what it will reach after fine-tuning.
"""

from __future__ import annotations

import contextlib
import copy
import io
import random
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torchvision  # noqa: F401  Ultralytics' NMS uses torchvision's kernel only once it is imported (10x faster)

from yoloprune.data import DetSplit, dataset_yaml, load_split, split_images, split_paths, subset, take_slice
from yoloprune.errors import UserError
from yoloprune.scores import CALIB_IMAGES, agreement, class_maps, short_recovery

CONF, IOU, MAX_DET = 0.001, 0.7, 100


@dataclass
class EvalResult:
    map50_95: float
    map50: float
    images: int
    seconds: float
    score: float | None = None  # the search's objective (scores.py); mAP50-95 unless another score was asked


@dataclass
class LetterboxedImages:
    pixels: torch.Tensor  # (N, 3, S, S) uint8, RGB
    shapes: list[tuple[int, int]]  # original (h, w)


def letterbox(paths: list[Path], imgsz: int) -> LetterboxedImages:
    """Read and letterbox images like Ultralytics' val loader (long side to imgsz, pad 114)."""
    from ultralytics.data.augment import LetterBox

    box = LetterBox(new_shape=(imgsz, imgsz), auto=False, scaleup=False)
    out = torch.empty((len(paths), 3, imgsz, imgsz), dtype=torch.uint8)
    shapes = []
    for i, p in enumerate(paths):
        img = cv2.imread(str(p))
        if img is None:
            raise UserError(f"cannot read image {p}")
        h0, w0 = img.shape[:2]
        r = imgsz / max(h0, w0)
        if r != 1:
            interp = cv2.INTER_LINEAR if r > 1 else cv2.INTER_AREA
            img = cv2.resize(img, (min(round(w0 * r), imgsz), min(round(h0 * r), imgsz)), interpolation=interp)
        img = box(image=img)
        out[i] = torch.from_numpy(np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1)))
        shapes.append((h0, w0))
    return LetterboxedImages(out, shapes)


@contextlib.contextmanager
def channels_last(model: nn.Module):
    """Run `model` in channels-last layout (about 25% faster on CPU here), then restore it."""
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


def fused_copy(model: nn.Module) -> nn.Module:
    """An inference copy with Conv+BN folded (Ultralytics' fuse, as its validator does); the original is untouched."""
    model = copy.deepcopy(model).eval()
    return model.fuse(verbose=False) if hasattr(model, "fuse") else model


class OnnxDetector:
    """An exported .onnx detector run by ONNX Runtime, with the class names and size its export recorded."""

    def __init__(self, path: str | Path) -> None:
        import ast

        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise UserError(f"ONNX file not found: {path}")
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001  ORT raises its own exception types
            raise UserError(f"{path} is not a loadable ONNX model ({str(e).splitlines()[0][:120]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.names = {int(k): str(v) for k, v in ast.literal_eval(meta["names"]).items()}
            size = ast.literal_eval(meta["imgsz"])
            args = ast.literal_eval(meta.get("args", "{}"))
        except (KeyError, ValueError, SyntaxError, AttributeError):
            raise UserError(f"{path} lacks Ultralytics' export metadata (names, imgsz): export it with Ultralytics"
                            ) from None
        self.input = self.session.get_inputs()[0]
        if meta.get("task", "detect") != "detect":
            raise UserError(f"{path} is a {meta['task']} model; yoloprune evaluates detectors")
        if len(set(size)) != 1:
            raise UserError(f"{path} was exported at {size[0]}x{size[1]}; evaluation needs a square export")
        if args.get("nms"):
            raise UserError(f"{path} was exported with nms=True (its own confidence threshold); export without it")
        if self.input.type != "tensor(float)":
            raise UserError(f"{path} takes {self.input.type} input; export it in fp32 (half=False)")
        self.imgsz = int(size[0])
        self.end2end = meta.get("end2end", "False") == "True"
        self.batch = self.input.shape[0] if isinstance(self.input.shape[0], int) else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Raw predictions for a float batch; a fixed-batch export gets padded chunks."""
        x = x.float().contiguous().numpy()
        step = self.batch or len(x)
        outs = []
        for k in range(0, len(x), step):
            chunk = x[k:k + step]
            pad = step - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            outs.append(self.session.run(None, {self.input.name: chunk})[0][:step - pad])
        return torch.from_numpy(np.concatenate(outs))


def model_input(pixels: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 images as the float [0, 1] channels-last batch a model takes, on the device and dtype of `like`."""
    x = pixels.to(device=like.device, dtype=like.dtype) if like is not None else pixels.float()
    return (x / 255.0).contiguous(memory_format=torch.channels_last)


@contextlib.contextmanager
def inference_forward(model: nn.Module | OnnxDetector):
    """(forward function, input maker, end-to-end head?) for a PyTorch model (fused copy) or an ONNX one."""
    if isinstance(model, OnnxDetector):
        yield model, model_input, model.end2end
        return
    model = fused_copy(model)
    head = model.model[-1] if hasattr(model, "model") else None
    weight = next(model.parameters())
    with channels_last(model):
        yield model, lambda pixels: model_input(pixels, weight), bool(getattr(head, "end2end", False))


@torch.no_grad()
def predict(model: nn.Module | OnnxDetector, pixels: torch.Tensor, batch: int = 32) -> list[torch.Tensor]:
    """Detections (x1, y1, x2, y2, conf, cls) per image, in letterboxed coordinates."""
    from ultralytics.utils.nms import non_max_suppression

    out: list[torch.Tensor] = []
    with inference_forward(model) as (forward, as_input, end2end):
        for k in range(0, len(pixels), batch):
            preds = forward(as_input(pixels[k:k + batch]))
            out += [d.cpu() for d in non_max_suppression(preds, CONF, IOU, multi_label=True, max_det=MAX_DET,
                                                         end2end=end2end)]
    return out


def coco_map(det: DetSplit, detections: list[torch.Tensor], shapes: list[tuple[int, int]], imgsz: int) -> tuple[float, float]:
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


# -- BatchNorm recalibration -------------------------------------------------------------
def calibration_batches(data: str | Path, split: str, n: int, imgsz: int, batch: int = 32,
                        seed: int = 0) -> list[dict]:
    """`n` images of `split` drawn once through Ultralytics' training augmentation (mosaic off), collated into
    training batches (uint8 `img`, and the `cls`, `bboxes`, `batch_idx` labels a short recovery trains on)."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_yolo_dataset

    info = dataset_yaml(data)
    if not split_images(info, split):
        raise UserError(f"no calibration images in split '{split}' of {data}")
    cfg = get_cfg(overrides={"imgsz": imgsz, "mosaic": 0.0, "mixup": 0.0, "cutmix": 0.0, "copy_paste": 0.0,
                             "task": "detect", "mode": "train", "cache": False, "workers": 0})
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        dataset = build_yolo_dataset(cfg, [str(p) for p in split_paths(info, split)], batch, info, mode="train")
    state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        items = [dataset[i] for i in range(min(n, len(dataset)))]
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.random.set_rng_state(state[2])
    keys = ("img", "cls", "bboxes", "batch_idx")
    return [{k: v for k, v in dataset.collate_fn(items[j:j + batch]).items() if k in keys}
            for j in range(0, len(items), batch)]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: list[dict]) -> None:
    """Reset every BatchNorm's running statistics and re-estimate them (cumulative average)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not batches:
        return
    model.eval()
    saved = []
    for bn in bns:
        saved.append(bn.momentum)
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    weight = next(model.parameters())
    try:
        with channels_last(model):
            for b in batches:
                model(model_input(b["img"], weight))
    finally:
        for bn, momentum in zip(bns, saved):
            bn.momentum = momentum
        model.eval()


# -- the search's evaluator ----------------------------------------------------------------
class TrialEvaluator:
    """Scores candidate models on a fixed search slice, with BN recalibration; built once per search.

    The search slice comes from `split` (default val); the final-check slice is the test
    split when the data set has one, else the val images the search slice does not use.
    """

    def __init__(self, data: str | Path, model_names: dict[int, str], imgsz: int, val_images: int = 200,
                 calib_images: int = CALIB_IMAGES, calib_split: str | None = None, recalibrate: bool = True,
                 slice_seed: int | None = None, batch: int = 32, final_images: int | None = 500,
                 final_split: str | None = None, score: str = "map", reference: nn.Module | None = None) -> None:
        from yoloprune.scores import SCORES

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
        self.search_images = letterbox(self.search.images, imgsz)
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
            self.calibration = calibration_batches(data, c_split, calib_images, imgsz, batch)
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
        if self.recalibrate and recalibrate:
            recalibrate_bn(model, self.calibration)
        return evaluate(model, self.final, self.imgsz, self.batch, self._final_images)
