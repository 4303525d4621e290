"""Network slimming as a training stage (`yoloprune sparsify`).

Ultralytics' trainer on an already-trained checkpoint, plus an L1 subgradient on the
BatchNorm scales of the *prunable* channels only (channels of a PruneSpace group; Detect's
last convs and every other fixed layer get no penalty). Channels the task does not need
drift towards zero scale, so pruning them by BN scale (the default criterion) removes
little: the model becomes redundant the way long-trained large models are.

The penalty is applied as its proximal step after each optimizer step (soft-thresholding:
|gamma| shrinks by lr x l1 and stops at zero), not as a subgradient added to the loss: Ultralytics
clips the gradient norm to 10 after accumulation, which would throttle a subgradient of thousands
of channels (measured: a pull of 2.0 moved the scales by 6% in 12 steps), and scales it with AMP's
loss scale. So `l1` means the same on CPU and GPU, with or without AMP: each optimizer step moves
every prunable |gamma| towards zero by the step's learning rate times `l1`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from yoloprune import classic
from yoloprune.atomic import write_text_atomic
from yoloprune.checkpoint import load
from yoloprune.devices import resolve_device
from yoloprune.errors import UserError
from yoloprune.evaluation.evaluator import TrialEvaluator
from yoloprune.evaluation.scores import CALIB_IMAGES
from yoloprune.search.budget import Budget
from yoloprune.structure.groups import analyse
from yoloprune.structure.pruner import prune
from yoloprune.structure.space import PruneSpace
from yoloprune.training.finetune import PrunedDetectionTrainer, train_args_for

# The strongest pull that did not wreck the small converged model in one epoch of the fine-tune schedule
# (benchmarks/sparsify_lambda.py: 5 kept 97% of its mAP, 10 kept 14%); see benchmarks/README.md
DEFAULT_L1 = 5.0
SMALL_SCALE = 0.01  # |gamma| under this counts as switched off
# a sparsified model whose unpruned mAP (recalibrated) falls under this share of the original's is reported wrecked
WRECK_SHARE = 0.9


def prunable_bn_masks(space: PruneSpace) -> dict[str, torch.Tensor]:
    """{BatchNorm module name: bool mask of its channels that belong to a prunable group}."""
    graph = space.graph
    prunable = {int(r) for g in space.groups for p in g.parts for r in p}
    masks = {}
    for name, (bn, src) in graph.bns.items():
        mask = torch.tensor([graph.root(int(s)) in prunable for s in src], dtype=torch.bool)
        if mask.any():
            masks[name] = mask
    return masks


def bn_scales(model: nn.Module, masks: dict[str, torch.Tensor]) -> np.ndarray:
    """|gamma| of every prunable channel of `model` (one entry per channel per BatchNorm)."""
    modules = dict(model.named_modules())
    return np.concatenate([modules[n].weight.detach().abs().float().cpu().numpy()[m.numpy()]
                           for n, m in masks.items()]) if masks else np.zeros(0)


class SlimmingTrainer(PrunedDetectionTrainer):
    """The pruned-architecture trainer plus an L1 proximal step on the masked BatchNorm scales."""

    def __init__(self, *args, l1: float = DEFAULT_L1, masks: dict[str, torch.Tensor] | None = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.l1, self.masks = l1, masks or {}

    def optimizer_step(self) -> None:
        ema, self.ema = self.ema, None  # the stock step updates the EMA last: shrink first, so the EMA sees it
        try:
            super().optimizer_step()
        finally:
            self.ema = ema
        lrs = {id(p): group["lr"] for group in self.optimizer.param_groups for p in group["params"]}
        shrink_bn_scales(self.model.module if hasattr(self.model, "module") else self.model, self.masks, self.l1,
                         lrs)
        if self.ema:
            self.ema.update(self.model)


@torch.no_grad()
def shrink_bn_scales(model: nn.Module, masks: dict[str, torch.Tensor], l1: float, lrs: dict[int, float]) -> None:
    """Soft-threshold every masked BatchNorm scale of `model` by (its learning rate in `lrs`) x `l1`: the proximal
    step of an L1 penalty. Unmasked channels and other parameters are untouched."""
    if not l1:
        return
    for name, m in model.named_modules():
        mask = masks.get(name)
        if mask is not None:
            w = m.weight.data
            step = l1 * lrs.get(id(m.weight), 0.0)
            shrunk = torch.sign(w) * (w.abs() - step).clamp_min(0.0)
            w.copy_(torch.where(mask.to(w.device), shrunk, w))


def check_l1(l1: float) -> None:
    """Refuse a penalty that is negative or not a finite number."""
    if not np.isfinite(l1) or l1 < 0:
        raise UserError(f"--l1 {l1} must be a finite number >= 0 (the pull on each BatchNorm scale)")


def sparsify(weights: str | Path, data: str | Path, epochs: int, masks: dict[str, torch.Tensor],
             l1: float = DEFAULT_L1, **overrides) -> Path:
    """Train `weights` for `epochs` with the L1 pull on the masked BN scales; returns the last checkpoint (the
    most slimmed one; best.pt would pick the least sparse epoch). Same architecture as the input."""
    from yoloprune.threads import torch_threads

    check_l1(l1)
    if epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {epochs}")
    if not masks:
        raise UserError(f"{weights} has no BatchNorm on prunable channels: network slimming needs BatchNorm scales")
    args = train_args_for(weights, data, epochs, overrides)  # the fine-tune schedule: measured, the from-scratch
    # rate (lr0 0.01, no warmup) cost a converged model 15% of its mAP in one epoch without any penalty
    trainer = SlimmingTrainer(overrides=args, l1=l1, masks=masks)
    with torch_threads():
        trainer.train()
    return Path(trainer.last)


def scale_stats(scales: np.ndarray) -> dict:
    """Summary of a BN-scale distribution: quantiles and the share under SMALL_SCALE."""
    q = np.percentile(scales, [10, 50, 90]) if len(scales) else np.zeros(3)
    return {"channels": int(len(scales)), "p10": float(q[0]), "median": float(q[1]), "p90": float(q[2]),
            "share_below_small": float((scales < SMALL_SCALE).mean()) if len(scales) else 0.0}


def prunability(model: nn.Module, space: PruneSpace, evaluator: TrialEvaluator, target_flops: float) -> dict:
    """mAP50-95 (search slice, BN recalibrated) of `model` unpruned and pruned by uniform rates to `target_flops`
    (BN-scale criterion): how much of the model survives one-shot pruning."""
    rates = Budget(space, target_flops).project(np.zeros((1, len(space.groups))))[0]
    unpruned = evaluator.score(copy.deepcopy(model)).map50_95
    pruned = evaluator.score(prune(model, space, dict(zip(space.names, map(float, rates))), "bn")).map50_95
    return {"target_flops": target_flops, "flops_ratio": float(space.flops_ratio(rates[None])[0]),
            "unpruned_map50_95": unpruned, "uniform_map50_95": pruned,
            "kept_share": pruned / unpruned if unpruned > 0 else None}


def run_sparsify(weights: str | Path, data: str | Path, epochs: int, l1: float = DEFAULT_L1,
                 target_flops: float = 0.5, val_images: int = 200, calib_images: int = CALIB_IMAGES,
                 slice_seed: int = 0, log: Callable[[str], None] | None = None, device: str | None = None,
                 **overrides) -> dict:
    """Sparsify `weights` and report: BN-scale distributions and prunability (uniform rates at `target_flops`,
    recalibrated) before and after; writes sparsify.json and bn_scales.png beside the trainer's weights/."""
    check_l1(l1)
    if not 0.0 < target_flops < 1.0:
        raise UserError(f"--target-flops {target_flops} must lie in (0, 1): it is the fraction of FLOPs KEPT")
    device = resolve_device(device)
    loaded = load(weights, overrides.get("imgsz"))
    classic.refuse(loaded.model, ["sparsify"])
    space = analyse(loaded.model, loaded.imgsz)
    loaded.model.to(device)  # the readouts run there; so does the training
    masks = prunable_bn_masks(space)
    if not masks:
        raise UserError(f"{weights} has no BatchNorm on prunable channels: network slimming needs BatchNorm scales")
    train_args_for(weights, data, epochs, dict(overrides))  # bad input fails before minutes of evaluation
    evaluator = TrialEvaluator(data, loaded.model.names, loaded.imgsz, val_images, calib_images, slice_seed=slice_seed,
                               device=device)
    before = prunability(loaded.model, space, evaluator, target_flops)
    scales_before = bn_scales(loaded.model, masks)
    if log:
        log(f"before: mAP50-95 {before['unpruned_map50_95']:.4f} unpruned, {before['uniform_map50_95']:.4f} with "
            f"uniform rates at {target_flops:.0%} FLOPs; {scale_stats(scales_before)['share_below_small']:.1%} of "
            f"{len(scales_before)} prunable BN scales under {SMALL_SCALE}")
    out = sparsify(weights, data, epochs, masks, l1, device=device, **overrides)
    slim = load(out, loaded.imgsz)
    slim_space = analyse(slim.model, slim.imgsz)
    slim.model.to(device)
    after = prunability(slim.model, slim_space, evaluator, target_flops)
    scales_after = bn_scales(slim.model, masks)
    kept = after["unpruned_map50_95"] / before["unpruned_map50_95"] if before["unpruned_map50_95"] > 0 else None
    summary = {"weights": str(out), "source": str(weights), "epochs": epochs, "l1": l1,
               "small_threshold": SMALL_SCALE, "bn_scales": {"before": scale_stats(scales_before),
                                                             "after": scale_stats(scales_after)},
               "prunability": {"before": before, "after": after},
               "unpruned_map_kept": kept, "wrecked": kept is not None and kept < WRECK_SHARE,
               "search_images": len(evaluator.search.images)}
    run_dir = out.parent.parent
    plot_scales(scales_before, scales_after, run_dir / "bn_scales.png")
    write_text_atomic(run_dir / "sparsify.json", json.dumps(summary, indent=2))
    summary["run_dir"] = str(run_dir)
    return summary


def plot_scales(before: np.ndarray, after: np.ndarray, path: Path) -> None:
    """Histograms of the prunable BN scales before and after sparsifying (log-spaced bins)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = np.logspace(-4, np.log10(max(before.max(initial=1.0), after.max(initial=1.0)) * 1.1), 50)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(np.maximum(before, 1e-4), bins, alpha=0.6, label="before")
    ax.hist(np.maximum(after, 1e-4), bins, alpha=0.6, label="after")
    ax.axvline(SMALL_SCALE, color="k", lw=0.8, ls="--", label=f"{SMALL_SCALE}")
    ax.set(xscale="log", xlabel="|BatchNorm scale| of prunable channels", ylabel="channels", title="sparsify")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
