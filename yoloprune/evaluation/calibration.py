"""BatchNorm recalibration (EagleEye): re-estimate a pruned model's BN statistics on fixed training batches.

The batches are drawn once through Ultralytics' training augmentation (mosaic off) with a
fixed seed and kept in memory, so every candidate is recalibrated on the same images, seen
the way training saw them (measured: clean letterboxed images lower mAP instead).
"""

from __future__ import annotations

import contextlib
import io
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from yoloprune.errors import UserError
from yoloprune.evaluation.data import dataset_yaml, split_images, split_paths
from yoloprune.evaluation.inference import channels_last, model_input


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
