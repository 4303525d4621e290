"""What a search run depends on (`SearchConfig`), which of it is the run's identity, and its validation."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from yoloprune.devices import resolve_device
from yoloprune.errors import UserError
from yoloprune.evaluation.scores import CALIB_IMAGES, DEFAULT_SCORE, SCORES
from yoloprune.search.budget import FRONTS
from yoloprune.search.criteria import CRITERION_CHOICES
from yoloprune.search.executors import check_parallel
from yoloprune.search.pareto import FRONT_STRATEGIES
from yoloprune.search.strategies import AUTO_STRATEGY, STRATEGIES
from yoloprune.structure.importance import DEFAULT_CRITERION
from yoloprune.training.finetune import check_distill_weight
from yoloprune.training.sparsify import DEFAULT_L1, check_l1


@dataclass
class SearchConfig:
    """Everything a search run depends on (its identity is checked on resume)."""

    weights: str
    data: str
    target_flops: float | None = None
    max_latency_ms: float | None = None
    min_speedup: float | None = None  # latency budget as measured speedup over the unpruned model on this machine
    latency_threads: int = 1
    latency_models: int = 60
    trials: int = 60
    strategy: str = AUTO_STRATEGY  # one of STRATEGIES, or resolved per run (strategies.auto_strategy)
    val_images: int = 200
    slice_seed: int = 0  # the search slice is a seeded random draw from val, recorded in the run
    calib_images: int = CALIB_IMAGES
    imgsz: int | None = None
    seed: int = 0
    criterion: str | dict = DEFAULT_CRITERION  # one of CRITERION_CHOICES; the search resolves `auto` per group
    round_to: int = 8
    recalibrate: bool = True
    project: str = "runs/search"
    name: str | None = None
    resume: bool = False
    finetune_epochs: int = 0
    finetune_fraction: float = 1.0
    finetune_lr0: float | None = None  # initial SGD rate of every fine-tune and recovery (None: by length, default_lr0)
    distill_from: str | None = None  # teacher checkpoint of every fine-tune and recovery (the unpruned model)
    distill_weight: float | None = None  # its feature loss weight (None: Ultralytics' `dis`)
    score: str = DEFAULT_SCORE
    stages: int | str | None = None
    recover_epochs: int = 1
    sparsify_epochs: int = 0  # the recipe: network slimming first, then search, prune and fine-tune
    l1: float = DEFAULT_L1
    workers: int = 1
    worker_cpus: int | None = None
    worker_gpus: float = 0.0
    ray_address: str | None = None
    device: str | None = None  # --device syntax; None: the first CUDA device when one is visible (not identity)
    pareto: str | None = None  # one of FRONTS: search the whole mAP-cost front instead of one budget

    def classic_unsupported(self) -> list[str]:
        """The options that a classic YOLOv5 model cannot run with (they need Ultralytics' loss or distillation)."""
        return [flag for flag, on in (("--sparsify-epochs", self.sparsify_epochs), ("--distill", self.distill_from),
                                      ("--score recovered", self.score == "recovered")) if on]


IDENTITY = ("weights_sha256", "data", "target_flops", "max_latency_ms", "min_speedup", "imgsz", "criterion",
            "round_to", "val_images", "calib_images", "recalibrate", "strategy", "seed", "trials", "score", "stages",
            "recover_epochs", "distill_from", "distill_weight", "slice_seed", "sparsify_epochs", "l1", "pareto")
LATENCY_IDENTITY = ("latency_threads", "latency_models")


def check_config(cfg: SearchConfig) -> None:
    """Refuse, with one UserError line, a configuration that cannot run."""
    if cfg.strategy not in (AUTO_STRATEGY, *STRATEGIES):
        raise UserError(f"unknown strategy '{cfg.strategy}' (choose from {AUTO_STRATEGY}, {', '.join(STRATEGIES)})")
    if cfg.trials < 1:
        raise UserError(f"--trials must be >= 1, got {cfg.trials}")
    if cfg.val_images < 1 or cfg.calib_images < 1:
        raise UserError("--val-images and --calib-images must be >= 1 (use --no-recalibrate to skip calibration)")
    if not cfg.weights.endswith(".pt"):
        raise UserError(f"search needs a trained .pt checkpoint, got {cfg.weights}")
    if not Path(cfg.data).is_file():
        raise UserError(f"data file not found: {cfg.data} (give a dataset YAML or a COCO annotation JSON)")
    if cfg.pareto is not None:
        check_front(cfg)
    elif cfg.target_flops is None and cfg.max_latency_ms is None and cfg.min_speedup is None:
        raise UserError("give --target-flops, --max-latency-ms, --min-speedup or a combination")
    if cfg.target_flops is not None and not 0.0 < cfg.target_flops < 1.0:
        raise UserError(f"--target-flops {cfg.target_flops} must lie in (0, 1): it is the fraction of FLOPs KEPT")
    if cfg.max_latency_ms is not None and cfg.max_latency_ms <= 0:
        raise UserError(f"--max-latency-ms {cfg.max_latency_ms} must be > 0")
    if cfg.min_speedup is not None and cfg.min_speedup <= 1.0:
        raise UserError(f"--min-speedup {cfg.min_speedup} must be > 1: the measured speedup over the unpruned model")
    if cfg.finetune_epochs < 0:
        raise UserError(f"--finetune-epochs must be >= 0, got {cfg.finetune_epochs}")
    if cfg.finetune_lr0 is not None and not cfg.finetune_lr0 > 0:
        raise UserError(f"--finetune-lr0 must be > 0, got {cfg.finetune_lr0}")
    if not 0.0 < cfg.finetune_fraction <= 1.0:
        raise UserError(f"--finetune-fraction {cfg.finetune_fraction} must lie in (0, 1]: the share of the train split")
    if cfg.distill_from is not None and not (cfg.finetune_epochs or (cfg.stages and cfg.recover_epochs)):
        raise UserError("--distill distils during fine-tuning: add --finetune-epochs N (or --stages K)")
    check_distill_weight(cfg.distill_weight, cfg.distill_from)
    if cfg.distill_from is not None and not Path(cfg.distill_from).is_file():
        raise UserError(f"teacher checkpoint not found: {cfg.distill_from}")
    if cfg.score not in SCORES:
        raise UserError(f"unknown score '{cfg.score}' (choose from {', '.join(SCORES)})")
    if cfg.score == "recovered" and not cfg.recalibrate:
        raise UserError("--score recovered trains on the calibration batches: it cannot go with --no-recalibrate")
    device = resolve_device(cfg.device)
    if cfg.workers > 1 and cfg.device is not None and (device == "cpu") != (cfg.worker_gpus == 0):
        raise UserError(f"--device {cfg.device} with --workers {cfg.workers}: Ray workers take the device "
                        f"--worker-gpus gives them (0: the CPU); leave --device out or make them agree")
    check_parallel(cfg.workers, cfg.worker_cpus, cfg.worker_gpus, cfg.ray_address)
    cores = os.cpu_count() or 1
    if not 1 <= cfg.latency_threads <= cores:
        raise UserError(f"--latency-threads {cfg.latency_threads} must lie in 1..{cores} (visible cores)")
    if cfg.sparsify_epochs < 0:
        raise UserError(f"--sparsify-epochs must be >= 1 (or left out), got {cfg.sparsify_epochs}")
    check_l1(cfg.l1)
    if cfg.criterion not in CRITERION_CHOICES:
        raise UserError(f"unknown criterion '{cfg.criterion}' (choose from {', '.join(CRITERION_CHOICES)})")


def check_front(cfg: SearchConfig) -> None:
    """A front search (--pareto) is one-shot, by its own strategies (pareto.py); its budgets only bound the front."""
    if cfg.pareto not in FRONTS:
        raise UserError(f"unknown front '{cfg.pareto}' (choose from {', '.join(FRONTS)})")
    clashes = [flag for flag, on in (("--stages", cfg.stages is not None), ("--sparsify-epochs", cfg.sparsify_epochs),
                                     ("--finetune-epochs", cfg.finetune_epochs), ("--distill", cfg.distill_from),
                                     ("--strategy", cfg.strategy not in FRONT_STRATEGIES),
                                     ("--score", cfg.score != DEFAULT_SCORE))
               if on]
    if clashes:
        raise UserError(f"--pareto cannot go with {', '.join(clashes)}: it searches the front in one stage (--strategy "
                        f"auto, hdbo or sensitivity) on mAP; prune and fine-tune a point of it with `yoloprune pick`")
    if cfg.trials < 8:
        raise UserError(f"--pareto needs --trials >= 8 (a front from fewer points says little), got {cfg.trials}")
