"""The public Python API: what the CLI commands do, callable from a notebook with the same defaults.

The CLI, the demo and notebooks use this module; the pipeline's own modules never do.

    from yoloprune import api
    loaded = api.load("yolov8n.pt")
    space = api.analyse(loaded)                      # the prunable groups
    result = api.prune(loaded, api.uniform_rates(space, 0.3))
    api.save_pruned(result, loaded, "pruned.pt")
    api.evaluate("pruned.pt", "coco.yaml", val_images=200, recalibrate=True)
    summary = api.search("yolov8n.pt", "coco.yaml", target_flops=0.5, trials=60)
    front = api.search("yolov8n.pt", "coco.yaml", pareto="flops", trials=60)   # the whole front, then:
    api.pick(front["run_dir"], "pruned.pt", target_flops=0.4)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from yoloprune.checkpoint import LoadedModel, load
from yoloprune.checkpoint import save_pruned as _save_pruned
from yoloprune.devices import resolve_device
from yoloprune.errors import UserError
from yoloprune.evaluation.calibration import calibration_batches, recalibrate_bn
from yoloprune.evaluation.data import dataset_yaml, load_split, subset, take_slice
from yoloprune.evaluation.inference import OnnxDetector
from yoloprune.evaluation.metric import EvalResult
from yoloprune.evaluation.metric import evaluate as run_eval
from yoloprune.evaluation.scores import CALIB_IMAGES
from yoloprune.structure.groups import analyse as _analyse
from yoloprune.structure.importance import DEFAULT_CRITERION
from yoloprune.structure.pruner import PruneResult, check_rates, param_count, prune_by_rates
from yoloprune.structure.space import PruneSpace

__all__ = ["LoadedModel", "PruneResult", "PruneSpace", "load", "analyse", "read_rates", "check_rates", "prune",
           "uniform_rates", "save_pruned", "evaluate", "search", "pick", "finetune", "sparsify", "bench", "param_count",
           "group_table", "prunable_flops_share"]


def analyse(loaded: LoadedModel, round_to: int = 8) -> PruneSpace:
    """The prunable channel groups and FLOPs model of a loaded model."""
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


def prune(loaded: LoadedModel, rates: dict[str, float], criterion: str = DEFAULT_CRITERION, round_to: int = 8,
          space: PruneSpace | None = None) -> PruneResult:
    """Structurally prune `loaded.model` by {group: prune rate} (fraction of channels removed)."""
    return prune_by_rates(loaded.model, space or analyse(loaded, round_to), rates, criterion)


def uniform_rates(space: PruneSpace, ratio: float) -> dict[str, float]:
    """The same prune rate for every group."""
    if not 0.0 <= ratio < 1.0:
        raise UserError(f"--ratio {ratio} is outside [0, 1): it is the fraction of channels removed")
    return {name: float(ratio) for name in space.names}


def save_pruned(result: PruneResult, loaded: LoadedModel, out: str | Path, extra: dict | None = None) -> Path:
    """Save a pruned model as a stock Ultralytics checkpoint with its provenance inside."""
    return _save_pruned(result.model, loaded, out, {**result.provenance(), **(extra or {})})


def evaluate(weights: str | Path, data: str | Path, split: str = "val", val_images: int | None = None,
             imgsz: int | None = None, batch: int = 32, slice_seed: int | None = None, recalibrate: bool = False,
             calib_images: int = CALIB_IMAGES, image_dir: str | None = None, device: str | None = None) -> EvalResult:
    """mAP50-95 and mAP50 (pycocotools) of a model (.pt on `device`, or an exported .onnx on ONNX Runtime's CPU)
    on a slice of a data set's split."""

    if val_images is not None and val_images < 1:
        raise UserError(f"--val-images must be >= 1, got {val_images}")
    if batch < 1 or calib_images < 1:
        raise UserError("--batch and --calib-images must be >= 1")
    device = resolve_device(device)  # a device that cannot hold here is refused for an .onnx model too
    if str(weights).endswith(".onnx"):
        onnx_model = OnnxDetector(weights)
        if recalibrate:
            raise UserError("--recalibrate needs a PyTorch checkpoint: an ONNX model has no BatchNorm left to update")
        if imgsz not in (None, onnx_model.imgsz):
            raise UserError(f"{weights} was exported at {onnx_model.imgsz} px; --imgsz {imgsz} cannot change that")
        det = load_split(data, split, onnx_model.names, image_dir)
        return run_eval(onnx_model, subset(det, take_slice(det, val_images, slice_seed)), onnx_model.imgsz, batch)
    loaded = load(weights, imgsz)
    loaded.model.to(device)
    det = load_split(data, split, loaded.model.names, image_dir)
    det = subset(det, take_slice(det, val_images, slice_seed))
    if recalibrate:
        info = dataset_yaml(data)
        calib_split = "calib" if info.get("calib") else "train"
        recalibrate_bn(loaded.model, calibration_batches(data, calib_split, calib_images, loaded.imgsz, batch))
    return run_eval(loaded.model, det, loaded.imgsz, batch)


def search(weights: str | Path, data: str | Path, target_flops: float | None = None,
           on_trial: Callable[[dict, dict | None, int], None] | None = None, log: Callable[[str], None] | None = None,
           **options) -> dict:
    """Search per-group rates (one-shot, staged with `stages=K`, or the sparsify recipe with `sparsify_epochs=S`);
    `options` are SearchConfig fields (trials, strategy, max_latency_ms, finetune_epochs, ...). Returns the
    summary (also in the run folder's summary.json)."""
    from yoloprune.search.config import SearchConfig
    from yoloprune.search.loop import run_search
    from yoloprune.search.recipe import run_recipe
    from yoloprune.search.staged import run_staged

    cfg = SearchConfig(str(weights), str(data), target_flops, **options)
    run = run_staged if cfg.stages is not None else run_recipe if cfg.sparsify_epochs else run_search
    return run(cfg, on_trial, log)


def pick(run_dir: str | Path, out: str | Path, target_flops: float | None = None,
         max_latency_ms: float | None = None, min_speedup: float | None = None, **options) -> dict:
    """The best point of a front search (`search(..., pareto="flops")`) within one limit, pruned, re-checked and
    saved to `out`; `options`: finetune_epochs, latency_threads, device, log."""
    from yoloprune.search.pick import pick as run_pick

    return run_pick(run_dir, out, target_flops, max_latency_ms, min_speedup, **options)


def finetune(weights: str | Path, data: str | Path, epochs: int = 10, distill: str | Path | None = None,
             **overrides) -> Path:
    """Fine-tune a (pruned) checkpoint with Ultralytics' trainer, keeping its architecture; returns best.pt."""
    from yoloprune.training.finetune import finetune as run_finetune

    return run_finetune(weights, data, epochs, distill=distill, **overrides)


def sparsify(weights: str | Path, data: str | Path, epochs: int, l1: float | None = None,
             log: Callable[[str], None] | None = None, **options) -> dict:
    """Network slimming on a trained checkpoint (L1 on prunable BN scales) with its before/after report."""
    from yoloprune.training.sparsify import DEFAULT_L1, run_sparsify

    return run_sparsify(weights, data, epochs, DEFAULT_L1 if l1 is None else l1, log=log, **options)


def bench(weights: list[str], imgsz: int | None = None, threads: tuple[int, ...] = (1, 2), batch: int = 1,
          runs: int = 50, warmup: int = 10) -> list:
    """ONNX export and ONNX Runtime CPU latency of models side by side (speedups over the first)."""
    from yoloprune.latency.bench import benchmark

    if imgsz is None:
        if str(weights[0]).endswith(".onnx"):
            raise UserError("--imgsz is required when the first model is an .onnx file")
        imgsz = load(weights[0]).imgsz
    return benchmark([str(w) for w in weights], imgsz, threads, batch, runs, warmup)


def choose_criteria(loaded: LoadedModel, space: PruneSpace, data: str | Path, val_images: int = 200,
                    slice_seed: int | None = 0) -> dict[str, str]:
    """`--criterion auto`: {group: criterion}, probed on the first images of the search slice a search with the
    same --val-images and --slice-seed uses, so `layers` shows what that search would choose."""
    from yoloprune.evaluation.inference import letterbox
    from yoloprune.search.criteria import PROBE_IMAGES
    from yoloprune.search.criteria import (
        choose_criteria as choose,  # the api's own name takes a LoadedModel
    )

    val = load_split(data, "val", loaded.model.names)
    images = subset(val, take_slice(val, val_images, slice_seed)).images[:PROBE_IMAGES]
    return choose(loaded.model, space, letterbox(images, loaded.imgsz).pixels)


def group_table(space: PruneSpace) -> list[dict]:
    """The groups as plain dicts (the `layers --json` schema)."""
    return [{"name": g.name, "channels": g.channels, "parts": len(g.parts), "min_keep": g.min_keep * len(g.parts),
             "flops_share": round(g.flops_share, 6), "members": [m.removesuffix(".conv") for m in g.convs]}
            for g in space.groups]


def prunable_flops_share(space: PruneSpace) -> float:
    """Share of conv FLOPs in convs that any group touches."""
    everything = np.full((1, len(space.groups)), 1.0)
    return float(1.0 - space.flops(everything, rounded=False)[0] / space.flops()[0])
