"""Running a detector on letterboxed images: PyTorch (a Conv+BN-fused copy, channels-last) or ONNX Runtime.

Images are read and letterboxed once (uint8, in memory) the way Ultralytics' validator does
with rect=False; NMS is Ultralytics' own (on torchvision's kernel).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torchvision  # noqa: F401  Ultralytics' NMS uses torchvision's kernel only once it is imported (10x faster)

from yoloprune import classic
from yoloprune.errors import UserError

CONF, IOU, MAX_DET = 0.001, 0.7, 100


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
    if classic.is_classic(model):
        classic.empty_grids(model)  # the classic `_apply` also moves the cached 5-D grids, which this layout refuses
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


def fuse(model: nn.Module) -> nn.Module:
    """`model` with Conv+BN folded in place (Ultralytics' fuse, as its validator does; classic YOLOv5 models too)."""
    if classic.is_classic(model):
        return classic.fuse(model)
    return model.fuse(verbose=False) if hasattr(model, "fuse") else model


def fused_copy(model: nn.Module) -> nn.Module:
    """An inference copy with Conv+BN folded; the original is untouched."""
    return fuse(copy.deepcopy(model).eval())


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
        self.input = self.session.get_inputs()[0]
        self.classic = classic.is_classic_onnx(meta)  # a classic YOLOv5 export: the size is its input's
        try:
            self.names = {int(k): str(v) for k, v in ast.literal_eval(meta["names"]).items()}
            size = self.input.shape[2:] if self.classic else ast.literal_eval(meta["imgsz"])
            args = ast.literal_eval(meta.get("args", "{}"))
        except (KeyError, ValueError, SyntaxError, AttributeError):
            raise UserError(f"{path} lacks Ultralytics' export metadata (names, imgsz): export it with Ultralytics"
                            ) from None
        if meta.get("task", "detect") != "detect":
            raise UserError(f"{path} is a {meta['task']} model; yoloprune evaluates detectors")
        if self.classic:
            classic.check_onnx_detector(path, self.input.shape, self.session.get_outputs()[0].shape, len(self.names))
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
        out = torch.from_numpy(np.concatenate(outs))
        return classic.as_ultralytics_output(out) if self.classic else out


def model_input(pixels: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 images as the float [0, 1] channels-last batch a model takes, on the device and dtype of `like`."""
    x = pixels.to(device=like.device, dtype=like.dtype) if like is not None else pixels.float()
    return (x / 255.0).contiguous(memory_format=torch.channels_last)


@contextlib.contextmanager
def inference_forward(model: nn.Module | OnnxDetector, fuse: bool = True):
    """(forward function, input maker, end-to-end head?) for a PyTorch model (a fused copy, or the model itself in
    eval mode) or an ONNX one."""
    if isinstance(model, OnnxDetector):
        yield model, model_input, model.end2end
        return
    model = fused_copy(model) if fuse else model.eval()
    head = model.model[-1] if hasattr(model, "model") else None
    weight = next(model.parameters())
    forward = (lambda x: classic.as_ultralytics_output(model(x))) if classic.is_classic(model) else model
    with channels_last(model) if fuse else contextlib.nullcontext():  # converting costs more than a few images gain
        yield forward, lambda pixels: model_input(pixels, weight), bool(getattr(head, "end2end", False))


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
