"""The recovery recipe in one run (`yoloprune search --sparsify-epochs S --finetune-epochs E [--distill]`).

sparsify (network slimming, S epochs) -> search on the sparsified model -> prune the best
candidate -> fine-tune E epochs (distilled from the user's original model with --distill).
The run folder keeps every stage: `sparsify/` (Ultralytics run, sparsify.json, bn_scales.png),
`search/` (an ordinary search run with its pruned and fine-tuned checkpoints) and the recipe's
own meta.json and summary.json; `--resume` skips finished stages (a latency budget that does not
bind is found only when the search stage starts: the sparsified model is timed then). Every mAP drop is reported
against the original model on the same final-check images.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Callable

from yoloprune import classic
from yoloprune.checkpoint import file_sha256, load
from yoloprune.devices import resolve_device
from yoloprune.errors import UserError
from yoloprune.evaluation.data import check_classes
from yoloprune.evaluation.evaluator import TrialEvaluator
from yoloprune.search.budget import Budget
from yoloprune.search.config import IDENTITY, SearchConfig, check_config
from yoloprune.search.loop import run_search
from yoloprune.search.store import RunStore, run_dir_for
from yoloprune.structure.groups import analyse
from yoloprune.training.finetune import train_args_for
from yoloprune.training.sparsify import prunable_bn_masks, run_sparsify

READOUT_FLOPS = 0.5  # the sparsify stage's prunability readout when the budget is a latency only


def check_recipe(cfg: SearchConfig) -> None:
    """check_config plus what the recipe needs."""
    check_config(cfg)
    if cfg.sparsify_epochs < 1:
        raise UserError(f"--sparsify-epochs must be >= 1 (or left out for a search without it), got "
                        f"{cfg.sparsify_epochs}")
    if cfg.stages is not None:
        raise UserError("--sparsify-epochs makes the model prunable in one go: it does not combine with --stages")
    if cfg.finetune_epochs < 1:
        raise UserError("--sparsify-epochs starts the recipe sparsify -> search -> fine-tune: add --finetune-epochs E")


def run_recipe(cfg: SearchConfig, on_trial=None, log: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) the recipe; returns the search's summary with the recipe's stages and drops added."""
    check_recipe(cfg)
    original = load(cfg.weights, cfg.imgsz)  # a missing or foreign file fails before anything is written
    classic.refuse(original.model, cfg.classic_unsupported())
    check_classes(original.model.names, cfg.data)
    space = analyse(original.model, original.imgsz, cfg.round_to)
    if not prunable_bn_masks(space):
        raise UserError(f"{cfg.weights} has no BatchNorm on prunable channels: --sparsify-epochs slims BatchNorm "
                        f"scales; leave it out for this model")
    if cfg.target_flops is not None:
        Budget(space, cfg.target_flops)  # an impossible budget fails now, not after the sparsify epochs
    train_args_for(cfg.weights, cfg.data, cfg.sparsify_epochs, {})
    store = RunStore(run_dir_for(cfg.project, cfg.name, cfg.resume))
    meta = {**asdict(cfg), "imgsz": original.imgsz, "weights_sha256": file_sha256(cfg.weights)}
    if cfg.resume:
        store.check_identity(meta, IDENTITY)
    else:
        store.write_json("meta.json", meta)

    sparse = RunStore(store.path("sparsify"))
    if sparse.has("sparsify.json"):
        sparsified = {**sparse.read_json("sparsify.json"), "run_dir": str(sparse.dir)}
    else:
        if log:
            log(f"recipe 1/3: sparsify {cfg.sparsify_epochs} epoch(s), L1 {cfg.l1} on the prunable BN scales")
        sparsified = run_sparsify(cfg.weights, cfg.data, cfg.sparsify_epochs, cfg.l1,
                                  target_flops=cfg.target_flops or READOUT_FLOPS, val_images=cfg.val_images,
                                  calib_images=cfg.calib_images, slice_seed=cfg.slice_seed, log=log,
                                  imgsz=original.imgsz, fraction=cfg.finetune_fraction, project=str(store.dir),
                                  name="sparsify", exist_ok=True, workers=2, device=cfg.device)
    if log:
        log(f"recipe 2/3: search on the sparsified model; 3/3: fine-tune {cfg.finetune_epochs} epoch(s)"
            + (" distilled from the original" if cfg.distill_from else ""))
    searched = RunStore(store.path("search"))
    if searched.has("summary.json"):
        summary = searched.read_json("summary.json")
    else:
        search = replace(cfg, weights=sparsified["weights"], project=str(store.dir), name="search",
                         resume=searched.has("meta.json"), sparsify_epochs=0)
        summary = run_search(search, on_trial, log)

    evaluator = TrialEvaluator(cfg.data, original.model.names, original.imgsz, cfg.val_images, recalibrate=False,
                               slice_seed=cfg.slice_seed, device=resolve_device(cfg.device))
    reference = evaluator.final_check(original.model.to(evaluator.device), recalibrate=False).map50_95
    final = summary["finetuned_final_check_map50_95"]
    recipe = {
        "original": cfg.weights, "original_final_check_map50_95": reference,
        "sparsified": sparsified["weights"], "sparsify_epochs": cfg.sparsify_epochs, "l1": cfg.l1,
        "sparsify_wrecked": sparsified["wrecked"], "prunability": sparsified["prunability"],
        "finetune_epochs": cfg.finetune_epochs, "distilled": cfg.distill_from is not None,
        "drop_before_finetune": reference - summary["best"]["final_check_map50_95"],
        "drop_after_finetune": reference - final,
    }
    result = {**summary, "run_dir": str(store.dir), "search_run_dir": summary["run_dir"], "recipe": recipe}
    store.write_json("summary.json", result)
    return result
