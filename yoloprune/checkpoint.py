"""Loading user models (.pt checkpoint or model YAML) and saving stock-loadable checkpoints.

The user's file is loaded as named: Ultralytics' own loader rewrites `yolov5l.pt` to
`yolov5lu.pt` and tries to download it. Saved checkpoints pickle only stock Ultralytics
and torch classes plus plain types, so `ultralytics.YOLO(path)` loads them without
yoloprune, also under `ULTRALYTICS_SAFE_LOAD=1`.
"""

from __future__ import annotations

import copy
import hashlib
import os
import pickle
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn as nn

from yoloprune import classic
from yoloprune.errors import UserError


@dataclass
class LoadedModel:
    """A user's model with what yoloprune needs to know about it."""

    model: nn.Module
    train_args: dict
    source: str
    imgsz: int


def load(weights: str | Path, imgsz: int | None = None) -> LoadedModel:
    """Load a .pt checkpoint or model YAML; `imgsz` defaults to the checkpoint's training size."""
    model, train_args = load_model(weights)
    size = imgsz or default_imgsz(train_args)
    stride = int(max(model.stride)) if hasattr(model, "stride") else 32
    if size % stride:
        raise UserError(f"--imgsz {size} is not a multiple of the model stride {stride}")
    return LoadedModel(model, train_args, str(weights), size)


def load_model(weights: str | Path) -> tuple[nn.Module, dict]:
    """(DetectionModel in float32 eval mode, its checkpoint's train_args) from a .pt or .yaml file."""
    path = Path(weights)
    missing = UserError(f"weights file not found: {path} (give a local .pt checkpoint or model .yaml)")
    from ultralytics.nn.tasks import DetectionModel

    if path.suffix in (".yaml", ".yml"):  # a local file, or a YAML that ships with Ultralytics by bare name
        try:
            model = DetectionModel(str(path), verbose=False)
        except Exception as e:  # noqa: BLE001 - any parse/build failure is bad input here
            if not path.is_file():
                raise missing from None
            raise UserError(f"{path} is not a buildable Ultralytics model YAML: {e}") from None
        return model.float().eval(), {}
    if not path.is_file():
        raise missing
    if path.suffix != ".pt":
        raise UserError(f"{path}: unsupported weights format '{path.suffix}' (use an Ultralytics .pt or model .yaml)")
    ckpt = _torch_load(path)
    model = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else None
    if isinstance(model, nn.Module) and classic.is_classic(model):
        classic.check_detector(model, path)
        opt = ckpt.get("opt") if isinstance(ckpt.get("opt"), dict) else {}
        return classic.prepare(model.float().eval()), {"imgsz": opt["imgsz"]} if opt.get("imgsz") else {}
    if not isinstance(model, DetectionModel):
        raise UserError(f"{path} is not an Ultralytics detection checkpoint (no DetectionModel inside)")
    train_args = ckpt.get("train_args") or {}
    return model.float().eval(), dict(train_args)


def _torch_load(path: Path, classic_code_tried: bool = False) -> dict:
    """The unpickled checkpoint; a classic YOLOv5 one once its code is importable (exit 2 naming how, if not)."""
    from ultralytics.nn.tasks import temporary_modules

    try:
        with temporary_modules(modules={"ultralytics.yolo.utils": "ultralytics.utils",
                                         "ultralytics.yolo.v8": "ultralytics.models.yolo",
                                         "ultralytics.yolo.data": "ultralytics.data"},
                               attributes={"ultralytics.nn.tasks.YOLOv10DetectionModel":
                                           "ultralytics.nn.tasks.DetectionModel"}):
            return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "yolov5":
            raise UserError(f"{path} was saved by the yolov5 package (it pickles '{e.name}'): install it "
                            f"({classic.INSTALL})") from None
        if e.name and e.name.split(".")[0] in classic.CLASSIC_MODULES:
            if not classic_code_tried and classic.make_importable():
                return _torch_load(path, classic_code_tried=True)
            raise UserError(f"{path} is a checkpoint of the ultralytics/yolov5 repository (it pickles '{e.name}', "
                            f"which does not import here): {classic.HOW_TO_GET_IT}") from None
        raise UserError(f"{path} needs the module '{e.name}', which is not installed") from None
    except (RuntimeError, EOFError, pickle.UnpicklingError, AttributeError, ValueError) as e:
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__})") from None


def default_imgsz(train_args: dict, fallback: int = 640) -> int:
    """The image size the checkpoint was trained at (its train_args), else `fallback`."""
    imgsz = train_args.get("imgsz", fallback)
    return int(imgsz[0] if isinstance(imgsz, (list, tuple)) else imgsz)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(model: nn.Module, out: str | Path, train_args: dict, provenance: dict) -> Path:
    """Write an Ultralytics-format checkpoint atomically (no half-written file on failure)."""
    import ultralytics

    out = Path(out)
    if out.suffix != ".pt":
        raise UserError(f"output must end in .pt: {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    date = datetime.now(timezone.utc).isoformat()
    ckpt = {
        "date": date,
        "version": ultralytics.__version__,
        "model": copy.deepcopy(model).half().eval(),
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": _plain(train_args),
        "train_metrics": None,
        "yoloprune": _plain(provenance),
    }
    if classic.is_classic(model):  # the classic tools read their own layout
        ckpt = classic.checkpoint(ckpt["model"], date, ckpt["train_args"], ckpt["yoloprune"])
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def save_pruned(model: nn.Module, loaded: LoadedModel, out: str | Path, provenance: dict) -> Path:
    """Save a model derived from `loaded` as a stock checkpoint, its source and `provenance` recorded inside."""
    source = Path(loaded.source)
    record = {"source": str(source), "source_sha256": file_sha256(source) if source.is_file() else None,
              "imgsz": loaded.imgsz, **provenance}
    return save_checkpoint(model, out, dict(loaded.train_args) or {"imgsz": loaded.imgsz}, record)


def _plain(obj):
    """Nested dicts/lists of str, int, float, bool, None only (safe for weights_only loads)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)
