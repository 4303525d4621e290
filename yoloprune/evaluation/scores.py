"""What a pruned candidate is worth before fine-tuning: the search's objective (`--score`).

- `map`: mAP50-95 on the search slice after BatchNorm recalibration (HDBOFP's objective with
  EagleEye's recalibration). Informative on redundant models; on a small converged model at a
  deep budget nearly every candidate scores about zero and the landscape is flat.
- `recovered`: the same mAP after the same short recovery for every candidate: a few SGD steps
  of Ultralytics' own detection loss on the fixed, augmented calibration batches, then
  recalibration (NetAdapt's short-term fine-tune, kept cheap: no trainer, no data loader).
- `agreement`: how closely the candidate's class-score maps match the unpruned model's on the
  search slice (mean cosine similarity); no labels and no training, about the cost of `map`.

Written by hand because Ultralytics' trainer costs seconds of setup (data loaders, EMA,
checkpoints) per call: far more than the few steps a candidate gets here.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from yoloprune.evaluation.inference import inference_forward

SCORES = ("map", "recovered", "agreement")
DEFAULT_SCORE = "map"
# BN calibration images per candidate: 32 ranked candidates as well as 200 at 30% and 50% FLOPs
# (benchmarks/score_rank.py) and cut a trial from 1.36x to 0.70x `YOLO.val` (benchmarks/eval_speed.py)
CALIB_IMAGES = 32
RECOVERY_STEPS = 20
RECOVERY_LR = 0.01  # per nominal batch of 64 images, as Ultralytics scales its loss (measured: above 0.002)
NOMINAL_BATCH = 64


def short_recovery(model: nn.Module, batches: list[dict], steps: int = RECOVERY_STEPS,
                   lr: float = RECOVERY_LR) -> None:
    """Train `model` in place for `steps` SGD steps on the calibration batches (cycled, in order)."""
    from ultralytics.cfg import get_cfg

    if not batches or steps < 1:
        return
    model.args = get_cfg()  # the loss reads its box/cls/dfl gains from model.args
    model.criterion = None
    trained = [p for name, p in model.named_parameters() if ".dfl" not in name]  # DFL is a fixed decoder, as in
    for p in trained:                                                              # Ultralytics' trainer
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(trained, lr=lr, momentum=0.937, nesterov=True)
    weight = next(model.parameters())
    model.train()
    try:
        for step in range(steps):
            b = batches[step % len(batches)]
            batch = {k: v.to(weight.device) for k, v in b.items()}
            batch["img"] = batch["img"].to(weight.dtype) / 255.0
            loss, _ = model.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            (loss.sum() * NOMINAL_BATCH / len(b["img"])).backward()
            torch.nn.utils.clip_grad_norm_(trained, 10.0)
            optimizer.step()
    finally:
        model.criterion = None
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)


@torch.no_grad()
def class_maps(model: nn.Module, pixels: torch.Tensor, batch: int = 32, fuse: bool = True) -> torch.Tensor:
    """The per-anchor class probabilities (N, classes x anchors) of `model` on letterboxed images (`fuse`: run a
    Conv+BN-fused copy, as every evaluation does; else the model itself)."""
    out = []
    with inference_forward(model, fuse) as (forward, as_input, _):
        for k in range(0, len(pixels), batch):
            y = forward(as_input(pixels[k:k + batch]))
            y = y[0] if isinstance(y, (list, tuple)) else y
            out.append(y[:, 4:].flatten(1).float().cpu())
    return torch.cat(out)


def agreement(candidate_maps: torch.Tensor, reference_maps: torch.Tensor) -> float:
    """Mean cosine similarity, image by image, of two models' class maps (1.0 = identical outputs)."""
    return float(torch.nn.functional.cosine_similarity(candidate_maps, reference_maps, dim=1, eps=1e-8).mean())
