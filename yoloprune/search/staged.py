"""Staged search for models that one-shot pruning collapses (`yoloprune search --stages K`).

The FLOPs target t is reached in K geometric steps: stage k searches per-group rates for the
current model at t^(k/K) of the original FLOPs, prunes the best candidate and recovers it with
Ultralytics' trainer (`--recover-epochs`) before the next stage (NetAdapt, MSVFP). Each stage is
an ordinary search run in `<run>/stageK` (its trials, best rates, pruned and recovered
checkpoints), so `--resume` skips finished stages and continues the unfinished one trial by
trial. `--stages auto` picks K from uniform probes: the fewest steps whose first step keeps at
least COLLAPSE_SHARE of the unpruned mAP.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import asdict, replace
from typing import Callable

import numpy as np

from yoloprune import classic
from yoloprune.checkpoint import file_sha256, load
from yoloprune.devices import resolve_device
from yoloprune.errors import UserError
from yoloprune.evaluation.evaluator import TrialEvaluator
from yoloprune.search.budget import Budget
from yoloprune.search.config import IDENTITY, SearchConfig, check_config
from yoloprune.search.criteria import AUTO
from yoloprune.search.loop import BudgetDoesNotBind, run_search
from yoloprune.search.report import COLLAPSE_SHARE, unpruned_map
from yoloprune.search.store import RunStore, run_dir_for
from yoloprune.structure.groups import analyse
from yoloprune.structure.importance import DEFAULT_CRITERION
from yoloprune.structure.pruner import param_count, prune

MIN_STAGE_CUT = 0.05  # every stage removes at least this share of its input's FLOPs
MIN_STAGE_TRIALS = 2
MAX_AUTO_STAGES = 4


def stage_limit(target_flops: float) -> int:
    """The most stages a FLOPs target allows (each stage cuts at least MIN_STAGE_CUT)."""
    return max(1, int(math.log(target_flops) / math.log(1.0 - MIN_STAGE_CUT)))


def check_staged(cfg: SearchConfig) -> None:
    """check_config plus what only a staged search refuses."""
    check_config(cfg)
    if cfg.sparsify_epochs:
        raise UserError("--sparsify-epochs makes the model prunable in one go: it does not combine with --stages")
    if cfg.target_flops is None:
        raise UserError("--stages steps on FLOPs: give --target-flops (a --max-latency-ms limit then binds the last "
                        "stage)")
    if cfg.min_speedup is not None:
        raise UserError("--min-speedup is relative to each stage's input: with --stages give --max-latency-ms")
    if cfg.finetune_epochs:
        raise UserError("with --stages every stage's recovery is the fine-tune: use --recover-epochs, not "
                        "--finetune-epochs")
    if cfg.recover_epochs < 0:
        raise UserError(f"--recover-epochs must be >= 0, got {cfg.recover_epochs}")
    if cfg.stages == "auto":
        return
    if not isinstance(cfg.stages, int) or cfg.stages < 1:
        raise UserError(f"--stages must be a whole number >= 1 or 'auto', got {cfg.stages}")
    limit = stage_limit(cfg.target_flops)
    if cfg.stages > limit:
        raise UserError(f"--stages {cfg.stages} is more than --target-flops {cfg.target_flops} allows: each stage must "
                        f"cut at least {MIN_STAGE_CUT:.0%} of its FLOPs, so at most {limit} stage(s)")
    if cfg.trials < MIN_STAGE_TRIALS * cfg.stages:
        raise UserError(f"--trials {cfg.trials} is too few for {cfg.stages} stages (at least {MIN_STAGE_TRIALS} each)")


def auto_stages(cfg: SearchConfig, log: Callable[[str], None] | None = None) -> int:
    """The fewest stages whose first step, pruned with uniform rates, keeps >= COLLAPSE_SHARE of the unpruned mAP."""
    loaded = load(cfg.weights, cfg.imgsz)
    space = analyse(loaded.model, loaded.imgsz, cfg.round_to)
    ev = TrialEvaluator(cfg.data, loaded.model.names, loaded.imgsz, cfg.val_images, cfg.calib_images,
                        recalibrate=cfg.recalibrate, slice_seed=cfg.slice_seed, device=resolve_device(cfg.device))
    reference = unpruned_map(loaded, ev)
    most = max(1, min(MAX_AUTO_STAGES, stage_limit(cfg.target_flops), cfg.trials // MIN_STAGE_TRIALS))
    for k in range(1, most + 1):
        step = cfg.target_flops ** (1.0 / k)
        rates = Budget(space, step).project(np.zeros((1, len(space.groups))))[0]
        criterion = DEFAULT_CRITERION if cfg.criterion == AUTO else cfg.criterion  # a probe, before any choice
        candidate = prune(loaded.model, space, dict(zip(space.names, map(float, rates))), criterion).to(ev.device)
        share = ev.score(candidate).map50_95 / max(reference, 1e-9)
        if log:
            log(f"stages auto: {k} stage(s), first step to {step:.0%} FLOPs keeps {share:.0%} of the unpruned mAP "
                f"with uniform rates")
        if share >= COLLAPSE_SHARE:
            return k
    return most


def run_staged(cfg: SearchConfig, on_trial=None, log: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) a staged search; returns its summary (also in <run>/summary.json)."""
    check_staged(cfg)
    store = RunStore(run_dir_for(cfg.project, cfg.name, cfg.resume))
    original = load(cfg.weights, cfg.imgsz)  # a missing or foreign file fails before anything is written
    classic.refuse(original.model, cfg.classic_unsupported())
    meta = {**asdict(cfg), "weights_sha256": file_sha256(cfg.weights)}
    original_space = analyse(original.model, original.imgsz, cfg.round_to)
    if cfg.resume:
        stages = store.check_identity(meta, IDENTITY)["stages_resolved"]
    else:
        Budget(original_space, cfg.target_flops)  # feasible at all?
        stages = auto_stages(cfg, log) if cfg.stages == "auto" else cfg.stages
        store.write_json("meta.json", {**meta, "stages_resolved": stages})

    base_flops = original_space.flops()[0]
    weights, summaries = cfg.weights, []
    for k in range(1, stages + 1):
        stage = RunStore(store.path(f"stage{k}"))
        if stage.has("summary.json"):
            summary = stage.read_json("summary.json")
        else:
            current_model = load(weights, cfg.imgsz)
            current = analyse(current_model.model, current_model.imgsz, cfg.round_to).flops()[0]
            step = min(cfg.target_flops ** (k / stages) * base_flops / current, 1.0 - 1e-6)
            n_trials = cfg.trials // stages + (cfg.trials % stages if k == stages else 0)
            if log:
                log(f"stage {k}/{stages}: {n_trials} trials to {cfg.target_flops ** (k / stages):.1%} of the original "
                    f"FLOPs ({step:.1%} of this stage's input)")
            sub = replace(cfg, weights=str(weights), target_flops=step, trials=n_trials, project=str(store.dir),
                          name=stage.dir.name, resume=stage.has("meta.json"), stages=None,
                          finetune_epochs=cfg.recover_epochs,
                          max_latency_ms=cfg.max_latency_ms if k == stages else None)
            try:
                summary = run_search(sub, on_trial, log)
            except BudgetDoesNotBind:  # the earlier stages' FLOPs cuts already brought the model under the limit
                if log:
                    log(f"stage {k}: --max-latency-ms {cfg.max_latency_ms} no longer binds on this stage's input; "
                        f"the stage searches on FLOPs alone")
                summary = run_search(replace(sub, max_latency_ms=None), on_trial, log)
        summaries.append(summary)
        weights = summary.get("finetuned") or summary["pruned"]
    return _finish_staged(cfg, store, original, base_flops, weights, summaries)


def _finish_staged(cfg: SearchConfig, store: RunStore, original, base_flops: float, weights: str,
                   summaries: list[dict]) -> dict:
    final = load(weights, cfg.imgsz)
    flops = analyse(final.model, final.imgsz, cfg.round_to).flops()[0]
    out = store.path("pruned.pt")
    tmp = out.with_name("pruned.pt.tmp")
    shutil.copyfile(weights, tmp)
    tmp.replace(out)
    last = summaries[-1]
    key = "finetuned_final_check_map50_95" if "finetuned" in last else None
    summary = {
        "run_dir": str(store.dir), "strategy": cfg.strategy, "score": cfg.score, "target_flops": cfg.target_flops,
        "stages": len(summaries), "recover_epochs": cfg.recover_epochs,
        "trials": sum(s["trials"] for s in summaries), "flops_ratio": flops / base_flops,
        "params": param_count(final.model), "params_before": param_count(original.model),
        "final_check_map50_95": last[key] if key else last["best"]["final_check_map50_95"],
        "final_check_map50": last["finetuned_final_check_map50"] if key else last["best"]["final_check_map50"],
        "final_check_images": last["best"]["final_check_images"], "pruned": str(out),
        "measured_latency_ms": last.get("measured_latency_ms"), "max_latency_ms": cfg.max_latency_ms,
        "stage_summaries": summaries,
    }
    store.write_json("summary.json", summary)
    return summary
