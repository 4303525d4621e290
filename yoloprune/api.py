"""The public Python API: what the CLI commands do, callable from a notebook with the same defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.nn as nn
import yaml

from yoloprune import checkpoint
from yoloprune.errors import UserError
from yoloprune.importance import CRITERIA, DEFAULT_CRITERION
from yoloprune.scores import CALIB_IMAGES
from yoloprune.space import PruneSpace, analyse as _analyse


@dataclass
class LoadedModel:
    """A user's model with what yoloprune needs to know about it."""

    model: nn.Module
    train_args: dict
    source: str
    imgsz: int


def load(weights: str | Path, imgsz: int | None = None) -> LoadedModel:
    """Load a .pt checkpoint or model YAML; `imgsz` defaults to the checkpoint's training size."""
    model, train_args = checkpoint.load_model(weights)
    size = imgsz or checkpoint.default_imgsz(train_args)
    stride = int(max(model.stride)) if hasattr(model, "stride") else 32
    if size % stride:
        raise UserError(f"--imgsz {size} is not a multiple of the model stride {stride}")
    return LoadedModel(model, train_args, str(weights), size)


def analyse(loaded: LoadedModel, round_to: int = 8) -> PruneSpace:
    """The prunable channel groups and FLOPs model of a loaded model."""
    if round_to < 1:
        raise UserError(f"--round-to must be >= 1, got {round_to}")
    return _analyse(loaded.model, loaded.imgsz, round_to)


def read_rates(path: str | Path) -> dict[str, float]:
    """A rates file: YAML mapping {group name: prune rate in [0, 1)}."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"rates file not found: {path}")
    try:
        rates = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(rates, dict) or not all(isinstance(v, (int, float)) for v in rates.values()):
        raise UserError(f"{path} must map group names to prune rates, e.g. 'model.2.cv1: 0.25'")
    return {str(k): float(v) for k, v in rates.items()}


def check_rates(space: PruneSpace, rates: dict[str, float]) -> None:
    """Raise UserError on unknown group names or rates outside [0, 1)."""
    unknown = sorted(set(rates) - set(space.names))
    if unknown:
        raise UserError(f"unknown group name(s): {', '.join(unknown[:5])} (list them with 'yoloprune layers')")
    bad = {k: v for k, v in rates.items() if not 0.0 <= v < 1.0}
    if bad:
        name, value = next(iter(bad.items()))
        raise UserError(f"prune rate of '{name}' is {value}; rates are the fraction removed, in [0, 1)")


@dataclass
class PruneResult:
    model: nn.Module
    rates: dict[str, float]
    flops_before: float
    flops_after: float
    params_before: int
    params_after: int
    criterion: str


def prune(loaded: LoadedModel, rates: dict[str, float], criterion: str = DEFAULT_CRITERION, round_to: int = 8,
          space: PruneSpace | None = None) -> PruneResult:
    """Structurally prune `loaded.model` by {group: prune rate} (fraction of channels removed)."""
    from yoloprune.pruner import prune as prune_model

    if criterion not in CRITERIA:
        raise UserError(f"unknown criterion '{criterion}' (choose from {', '.join(CRITERIA)})")
    space = space or analyse(loaded, round_to)
    check_rates(space, rates)
    pruned = prune_model(loaded.model, space, rates, criterion)
    vec = space.rates_vector(rates)[None]
    return PruneResult(pruned, dict(rates), float(space.flops()[0]), float(space.flops(vec)[0]),
                       param_count(loaded.model), param_count(pruned), criterion)


def uniform_rates(space: PruneSpace, ratio: float) -> dict[str, float]:
    """The same prune rate for every group."""
    if not 0.0 <= ratio < 1.0:
        raise UserError(f"--ratio {ratio} is outside [0, 1): it is the fraction of channels removed")
    return {name: float(ratio) for name in space.names}


def save_pruned(result: PruneResult, loaded: LoadedModel, out: str | Path, extra: dict | None = None) -> Path:
    """Save a pruned model as a stock Ultralytics checkpoint with its provenance inside."""
    source = Path(loaded.source)
    provenance = {
        "source": str(source),
        "source_sha256": checkpoint.file_sha256(source) if source.is_file() else None,
        "rates": result.rates, "criterion": result.criterion, "imgsz": loaded.imgsz,
        "flops_before": result.flops_before, "flops_after": result.flops_after,
        "params_before": result.params_before, "params_after": result.params_after, **(extra or {}),
    }
    args = dict(loaded.train_args) or {"imgsz": loaded.imgsz}
    return checkpoint.save_checkpoint(result.model, out, args, provenance)


def evaluate(weights: str | Path, data: str | Path, split: str = "val", val_images: int | None = None,
             imgsz: int | None = None, batch: int = 32, slice_seed: int | None = None, recalibrate: bool = False,
             calib_images: int = CALIB_IMAGES, image_dir: str | None = None):
    """mAP50-95 and mAP50 (pycocotools) of a model (.pt, or an exported .onnx) on a slice of a data set's split."""
    from yoloprune.data import load_split, subset, take_slice
    from yoloprune.evaluate import OnnxDetector, calibration_batches, evaluate as run_eval, recalibrate_bn

    if val_images is not None and val_images < 1:
        raise UserError(f"--val-images must be >= 1, got {val_images}")
    if batch < 1 or calib_images < 1:
        raise UserError("--batch and --calib-images must be >= 1")
    if str(weights).endswith(".onnx"):
        onnx_model = OnnxDetector(weights)
        if recalibrate:
            raise UserError("--recalibrate needs a PyTorch checkpoint: an ONNX model has no BatchNorm left to update")
        if imgsz not in (None, onnx_model.imgsz):
            raise UserError(f"{weights} was exported at {onnx_model.imgsz} px; --imgsz {imgsz} cannot change that")
        det = load_split(data, split, onnx_model.names, image_dir)
        return run_eval(onnx_model, subset(det, take_slice(det, val_images, slice_seed)), onnx_model.imgsz, batch)
    loaded = load(weights, imgsz)
    det = load_split(data, split, loaded.model.names, image_dir)
    det = subset(det, take_slice(det, val_images, slice_seed))
    if recalibrate:
        from yoloprune.data import dataset_yaml

        info = dataset_yaml(data)
        calib_split = "calib" if info.get("calib") else "train"
        recalibrate_bn(loaded.model, calibration_batches(data, calib_split, calib_images, loaded.imgsz, batch))
    return run_eval(loaded.model, det, loaded.imgsz, batch)


def param_count(model: nn.Module) -> int:
    """Number of parameters of a model."""
    return int(sum(p.numel() for p in model.parameters()))


def group_table(space: PruneSpace) -> list[dict]:
    """The groups as plain dicts (the `layers --json` schema)."""
    return [{"name": g.name, "channels": g.channels, "parts": len(g.parts), "min_keep": g.min_keep * len(g.parts),
             "flops_share": round(g.flops_share, 6), "members": [m.removesuffix(".conv") for m in g.convs]}
            for g in space.groups]


def prunable_flops_share(space: PruneSpace) -> float:
    """Share of conv FLOPs in convs that any group touches."""
    everything = np.full((1, len(space.groups)), 1.0)
    return float(1.0 - space.flops(everything, rounded=False)[0] / space.flops()[0])
