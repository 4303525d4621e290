"""The search loop: propose rates, prune, recalibrate, score, log; then re-check and save the best.

Run folders are `runs/search/expN`. Each finished trial is appended to `trials.jsonl`
before the next starts; `resume=True` continues the named (or latest) run from its log
and refuses when the weights, data or budget differ.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from yoloprune import api
from yoloprune.budget import Budget
from yoloprune.errors import UserError
from yoloprune.evaluate import TrialEvaluator, evaluate
from yoloprune.importance import CRITERIA, DEFAULT_CRITERION, unit_scores
from yoloprune.latency import LOCAL_POINTS, LatencyModel, PairedTimer, cache_dir, calibrated, latency_model
from yoloprune.parallel import CandidateScorer, LocalPool, RayPool, ScorerSpec, check_parallel
from yoloprune.scores import CALIB_IMAGES, DEFAULT_SCORE, SCORES
from yoloprune.strategies import (DETERMINISTIC, STRATEGIES, SearchContext, global_threshold_rates, initial_design,
                                  make_strategy)
from yoloprune.threads import torch_threads
from yoloprune.trialstore import TrialStore


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
    strategy: str = "hdbo"
    val_images: int = 200
    calib_images: int = CALIB_IMAGES
    imgsz: int | None = None
    seed: int = 0
    criterion: str = DEFAULT_CRITERION
    round_to: int = 8
    recalibrate: bool = True
    project: str = "runs/search"
    name: str | None = None
    resume: bool = False
    finetune_epochs: int = 0
    finetune_fraction: float = 1.0
    distill_from: str | None = None  # teacher checkpoint of every fine-tune and recovery (the unpruned model)
    score: str = DEFAULT_SCORE
    stages: int | str | None = None
    recover_epochs: int = 1
    workers: int = 1
    worker_cpus: int | None = None
    worker_gpus: float = 0.0
    ray_address: str | None = None


IDENTITY = ("weights_sha256", "data", "target_flops", "max_latency_ms", "min_speedup", "imgsz", "criterion", "round_to", "val_images",
            "calib_images", "recalibrate", "strategy", "seed", "trials", "score", "stages", "recover_epochs",
            "distill_from")
LATENCY_IDENTITY = ("latency_threads", "latency_models")
COLLAPSE_SHARE = 0.2  # the best initial candidate keeps less of the unpruned mAP: the collapsed regime


def check_config(cfg: SearchConfig) -> None:
    if cfg.strategy not in STRATEGIES:
        raise UserError(f"unknown strategy '{cfg.strategy}' (choose from {', '.join(STRATEGIES)})")
    if cfg.trials < 1:
        raise UserError(f"--trials must be >= 1, got {cfg.trials}")
    if cfg.val_images < 1 or cfg.calib_images < 1:
        raise UserError("--val-images and --calib-images must be >= 1 (use --no-recalibrate to skip calibration)")
    if not cfg.weights.endswith(".pt"):
        raise UserError(f"search needs a trained .pt checkpoint, got {cfg.weights}")
    if not Path(cfg.data).is_file():
        raise UserError(f"data file not found: {cfg.data} (give a dataset YAML or a COCO annotation JSON)")
    if cfg.target_flops is None and cfg.max_latency_ms is None and cfg.min_speedup is None:
        raise UserError("give --target-flops, --max-latency-ms, --min-speedup or a combination")
    if cfg.target_flops is not None and not 0.0 < cfg.target_flops < 1.0:
        raise UserError(f"--target-flops {cfg.target_flops} must lie in (0, 1): it is the fraction of FLOPs KEPT")
    if cfg.max_latency_ms is not None and cfg.max_latency_ms <= 0:
        raise UserError(f"--max-latency-ms {cfg.max_latency_ms} must be > 0")
    if cfg.min_speedup is not None and cfg.min_speedup <= 1.0:
        raise UserError(f"--min-speedup {cfg.min_speedup} must be > 1: the measured speedup over the unpruned model")
    if cfg.finetune_epochs < 0:
        raise UserError(f"--finetune-epochs must be >= 0, got {cfg.finetune_epochs}")
    if not 0.0 < cfg.finetune_fraction <= 1.0:
        raise UserError(f"--finetune-fraction {cfg.finetune_fraction} must lie in (0, 1]: the share of the train split")
    if cfg.distill_from is not None and not (cfg.finetune_epochs or (cfg.stages and cfg.recover_epochs)):
        raise UserError("--distill distils during fine-tuning: add --finetune-epochs N (or --stages K)")
    if cfg.distill_from is not None and not Path(cfg.distill_from).is_file():
        raise UserError(f"teacher checkpoint not found: {cfg.distill_from}")
    if cfg.score not in SCORES:
        raise UserError(f"unknown score '{cfg.score}' (choose from {', '.join(SCORES)})")
    if cfg.score == "recovered" and not cfg.recalibrate:
        raise UserError("--score recovered trains on the calibration batches: it cannot go with --no-recalibrate")
    check_parallel(cfg.workers, cfg.worker_cpus, cfg.worker_gpus, cfg.ray_address)
    cores = os.cpu_count() or 1
    if not 1 <= cfg.latency_threads <= cores:
        raise UserError(f"--latency-threads {cfg.latency_threads} must lie in 1..{cores} (visible cores)")
    if cfg.criterion not in CRITERIA:
        raise UserError(f"unknown criterion '{cfg.criterion}' (choose from {', '.join(CRITERIA)})")


def run_dir_for(cfg: SearchConfig) -> Path:
    """The run folder: the named or latest one on resume, else the next free expN."""
    project = Path(cfg.project)
    runs = sorted((p for p in project.glob("exp*") if re.fullmatch(r"exp\d*", p.name)),
                  key=lambda p: int(p.name[3:] or 1))
    if cfg.resume:
        target = project / cfg.name if cfg.name else (runs[-1] if runs else None)
        if target is None or not (target / "meta.json").exists():
            raise UserError(f"nothing to resume in {target or project}")
        return target
    if cfg.name:
        target = project / cfg.name
        if (target / "meta.json").exists():
            raise UserError(f"{target} already holds a search; pass --resume to continue it or another --name")
        return target
    n = max((int(p.name[3:] or 1) for p in runs), default=0) + 1
    return project / ("exp" if n == 1 else f"exp{n}")


def run_search(cfg: SearchConfig, on_trial: Callable[[dict, dict, int], None] | None = None,
               log: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) a search and return its summary (also written to summary.json)."""
    check_config(cfg)
    loaded = api.load(cfg.weights, cfg.imgsz)
    space = api.analyse(loaded, cfg.round_to)
    sha = api.checkpoint.file_sha256(cfg.weights) if Path(cfg.weights).is_file() else None
    total = 1 if cfg.strategy in DETERMINISTIC else cfg.trials
    run_dir = run_dir_for(cfg)
    meta = {**asdict(cfg), "imgsz": loaded.imgsz, "trials": total, "weights_sha256": sha, "groups": space.names}
    timed = cfg.max_latency_ms is not None or cfg.min_speedup is not None
    if cfg.resume:
        old = json.loads((run_dir / "meta.json").read_text())
        keys = IDENTITY + (LATENCY_IDENTITY if timed else ())
        diff = [k for k in keys if old.get(k) != meta.get(k)]
        if diff:
            raise UserError(f"cannot resume {run_dir}: its {', '.join(diff)} differ from this command's")
    if cfg.target_flops is not None:
        Budget(space, cfg.target_flops)  # an impossible FLOPs budget fails before minutes of latency fitting
    latency, limit = None, cfg.max_latency_ms
    timer = PairedTimer(loaded, space, cfg.latency_threads) if timed else None
    try:
        if timed:
            own = run_dir / "latency_model.json"  # a resumed run keeps projecting with the model it started with
            latency = (LatencyModel.load(own) if cfg.resume and own.exists() else
                       latency_model(timer, sha, cfg.latency_models, log=log))
        if cfg.min_speedup is not None:
            limit = min(limit or np.inf, timer.unpruned_ms / cfg.min_speedup)
            if log:
                log(f"--min-speedup {cfg.min_speedup}: the unpruned model measures {timer.unpruned_ms:.2f} ms "
                    f"({cfg.latency_threads} thread(s)); the budget is {limit:.2f} ms")
        budget = Budget(space, cfg.target_flops, latency=latency, max_latency_ms=limit)
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(run_dir / "meta.json", meta)
        if latency:
            _write_json(run_dir / "latency_model.json", asdict(latency))
        return _search(cfg, loaded, space, budget, timer, run_dir, total, on_trial, log)
    finally:
        if timer:
            timer.close()


def _search(cfg: SearchConfig, loaded, space, budget: Budget, timer: PairedTimer | None, run_dir: Path, total: int,
            on_trial, log) -> dict:
    """The trial loop of `run_search` (resumed from the run's trial log), then the final check."""
    evaluator = TrialEvaluator(cfg.data, loaded.model.names, loaded.imgsz, cfg.val_images, cfg.calib_images,
                               recalibrate=cfg.recalibrate, score=cfg.score, reference=loaded.model)
    scores = unit_scores(space, cfg.criterion)
    ctx = SearchContext(space, budget, scores, cfg.seed, total)
    strategy = make_strategy(cfg.strategy, ctx)
    init = initial_design(ctx) if cfg.strategy not in DETERMINISTIC else None

    n_init, regime = (len(init) if init is not None else total), None
    store = TrialStore(run_dir)
    trials = store.load()
    store.rewrite(trials)  # drops a line torn by a kill
    fit = budget.latency
    if timer:
        _calibrate(budget, fit, space, trials)
    done = {t["trial"] for t in trials}
    free = [t for t in range(total) if t not in done]  # a parallel run killed mid-way may leave holes
    pool = _pool(cfg, loaded, space, evaluator, total, log)
    proposed: dict[int, tuple[np.ndarray, str, float]] = {}
    start = time.perf_counter()
    try:
        while free or proposed:
            while free and pool.idle():
                t0 = time.perf_counter()
                t = free.pop(0)
                pending = np.array([space.rates_vector(r) for r in pool.in_flight()]) if proposed else None
                rates, phase = _next_rates(cfg.strategy, ctx, strategy, init, trials, t, pending)
                proposed[t] = rates, phase, time.perf_counter() - t0
                pool.submit(t, dict(zip(space.names, map(float, rates))))
            t, result = pool.next_result()
            rates, phase, propose_s = proposed.pop(t)
            trial = {"trial": t, "phase": phase, "rates": dict(zip(space.names, map(float, rates))),
                     "flops_ratio": float(budget.ratio(rates[None])[0]),
                     "latency_ms_est": float(budget.latency.predict(space, rates[None])[0]) if timer else None,
                     **result, "propose_seconds": propose_s}
            if timer and (_measured(trials) < LOCAL_POINTS or trial["score"] > max(x["score"] for x in trials)):
                # the first trials, then every new incumbent: the points that matter, all on the budget's boundary
                trial["latency_ms_measured"] = timer.measure(rates)
                _calibrate(budget, fit, space, trials + [trial], log)
            store.append(trial)
            trials.append(trial)
            if on_trial:
                on_trial(trial, max(trials, key=lambda x: x["score"]), total)
            if len(trials) == n_init:
                regime = classify_regime([x["map50_95"] for x in trials], unpruned_map(loaded, evaluator), log)
    finally:
        pool.close()
    search_seconds = time.perf_counter() - start
    regime = regime or classify_regime([x["map50_95"] for x in trials[:n_init]], unpruned_map(loaded, evaluator))
    return _finish(cfg, loaded, space, evaluator, trials, run_dir, search_seconds, regime, budget, timer, log,
                   fresh=len(trials) - len(done), workers=pool.workers)


def _measured(trials: list[dict]) -> int:
    return sum(x.get("latency_ms_measured") is not None for x in trials)


def _calibrate(budget: Budget, base: LatencyModel, space, trials: list[dict], log=None) -> None:
    """Rescale the budget's latency estimate to the candidates measured so far (each trial's own record)."""
    measured = [x for x in trials if x.get("latency_ms_measured") is not None]
    if not measured:
        return
    rates = np.array([space.rates_vector(x["rates"]) for x in measured])
    budget.latency = calibrated(base, space, rates, np.array([x["latency_ms_measured"] for x in measured]))
    if log:
        log(f"latency: trial {measured[-1]['trial']} measured {measured[-1]['latency_ms_measured']:.2f} ms; estimate "
            f"now x{budget.latency.scale:.3f} of the fit, margin {budget.latency.margin:.1%} ({len(measured)} measured)")


def _pool(cfg: SearchConfig, loaded, space, evaluator: TrialEvaluator, total: int, log):
    """This process for one worker (or a one-trial baseline), else Ray actors."""
    spec = ScorerSpec(cfg.weights, cfg.data, loaded.imgsz, cfg.round_to, cfg.criterion, cfg.val_images,
                      cfg.calib_images, cfg.recalibrate, cfg.score)
    if cfg.workers == 1 or total == 1:
        return LocalPool(CandidateScorer(spec, loaded, space, evaluator), cfg.worker_cpus)
    return RayPool(spec, min(cfg.workers, total), cfg.worker_cpus, cfg.worker_gpus, cfg.ray_address, log)


def unpruned_map(loaded, evaluator: TrialEvaluator) -> float:
    """The unpruned model's mAP50-95 on the search slice (its own BN statistics)."""
    return evaluate(loaded.model, evaluator.search, evaluator.imgsz, evaluator.batch, evaluator.search_images).map50_95


def classify_regime(first_maps: list[float], reference: float, log=None) -> dict:
    """Redundant or collapsed? The best of the first candidates (the initial design) as a share of the unpruned
    model's mAP. Under COLLAPSE_SHARE, scores without recovery are small and may carry little signal: say so and
    name the alternatives (measured: hdbo still climbed out of this regime on the small converged model)."""
    best = max(first_maps)
    share = best / reference if reference > 0 else None
    collapsed = share is not None and share < COLLAPSE_SHARE  # an unpruned model scoring 0 tells nothing
    if collapsed and log:
        log(f"warning: the best of the first {len(first_maps)} candidates keeps {share:.0%} of the unpruned mAP50-95 "
            f"({best:.3f} of {reference:.3f}): one-shot pruning collapses at this budget and scores may carry "
            f"little signal. The search goes on; if its best stays low, compare pruning in steps with recovery "
            f"(--stages auto or --stages K) or scoring after a short recovery (--score recovered)")
    regime = "collapsed" if collapsed else "redundant" if share is not None else "unscored"
    return {"regime": regime, "unpruned_map50_95": reference, "best_initial_map50_95": best,
            "best_initial_share": share}


def _next_rates(name: str, ctx: SearchContext, strategy, init, trials: list[dict], t: int,
                pending: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    if name == "uniform":
        return ctx.budget.project(np.zeros((1, len(ctx.space.groups))))[0], "uniform"
    if name == "global":
        return global_threshold_rates(ctx)[0], "global"
    if t < len(init):
        return init[t], "init"
    if name == "random":
        rng = np.random.default_rng([ctx.seed, t])
        return ctx.budget.project(rng.random((1, len(ctx.space.groups))) * ctx.budget.max_rate)[0], "random"
    rates = np.array([[tr["rates"][n] for n in ctx.space.names] for tr in trials])
    scores = np.array([tr["score"] for tr in trials])
    with torch_threads(1):  # BO in one thread: oversubscription, not the GP, is what makes it slow
        return strategy.propose(rates, scores, t, pending)[0], name


def _finish(cfg, loaded, space, evaluator, trials, run_dir: Path, search_seconds: float, regime: dict,
            budget: Budget, timer: PairedTimer | None, log=None, fresh: int = 0, workers: int = 1) -> dict:
    """Re-check, save and summarise the best trial; `fresh` trials ran in this invocation, in `search_seconds`."""
    best, measured_ms = max(trials, key=lambda x: x["score"]), None
    latency = budget.latency
    if latency:
        best, measured_ms = _fastest_enough(budget.max_latency_ms, space, trials, timer, log)
    result = api.prune(loaded, best["rates"], cfg.criterion, cfg.round_to, space)
    final = evaluator.final_check(result.model)  # recalibrates BN in place: the saved model keeps those statistics
    out = api.save_pruned(result, loaded, run_dir / "pruned.pt", {"search": str(run_dir), "strategy": cfg.strategy})
    _write_text(run_dir / "best_rates.yaml", yaml.safe_dump({k: round(v, 6) for k, v in best["rates"].items()},
                                                             sort_keys=False))
    propose = sum(t["propose_seconds"] for t in trials[len(trials) - fresh:])
    summary = {
        "run_dir": str(run_dir), "strategy": cfg.strategy, "target_flops": cfg.target_flops, "trials": len(trials),
        "best": {"trial": best["trial"], "rates": best["rates"], "flops_ratio": best["flops_ratio"],
                 "latency_ms_est": best.get("latency_ms_est"),
                 "params": result.params_after, "score": best["score"], "map50_95": best["map50_95"],
                 "map50": best["map50"],
                 "final_check_map50_95": final.map50_95, "final_check_map50": final.map50,
                 "final_check_images": final.images, "final_check_disjoint": evaluator.final_disjoint},
        "score": cfg.score, **regime, "pruned": str(out), "search_seconds": search_seconds,
        "max_latency_ms": budget.max_latency_ms, "min_speedup": cfg.min_speedup,
        "latency_threads": cfg.latency_threads if latency else None,
        "measured_latency_ms": measured_ms, "unpruned_latency_ms": timer.unpruned_ms if timer else None,
        "latency_calibration": {"scale": latency.scale, "margin": latency.margin,
                                "measured": _measured(trials)}
        if latency else None,
        "workers": workers, "trials_per_hour": fresh / search_seconds * 3600 if fresh else None,
        "bo_overhead_share": propose / search_seconds if fresh else None,  # share of the search loop's wall time
        "mean_trial_eval_seconds": float(np.mean([t["eval_seconds"] for t in trials])),
    }
    if cfg.finetune_epochs:
        summary.update(_finetune_best(cfg, out, evaluator, run_dir))
    _write_json(run_dir / "summary.json", summary)
    plot_run(trials, best, space.names, run_dir, cfg.score)
    return summary


def _finetune_best(cfg, pruned: Path, evaluator, run_dir: Path) -> dict:
    """Fine-tune the saved best candidate with Ultralytics' trainer; its final check keeps the trained BN."""
    from yoloprune.finetune import finetune

    tuned = finetune(pruned, cfg.data, cfg.finetune_epochs, distill=cfg.distill_from, fraction=cfg.finetune_fraction,
                     project=str(run_dir), name="finetune", exist_ok=True,
                     workers=2)  # a resumed run restarts an unfinished fine-tune
    after = evaluator.final_check(api.load(tuned).model, recalibrate=False)
    return {"finetuned": str(tuned), "finetune_epochs": cfg.finetune_epochs,
            "finetuned_final_check_map50_95": after.map50_95, "finetuned_final_check_map50": after.map50}


def _fastest_enough(limit: float, space, trials: list[dict], timer: PairedTimer, log) -> tuple[dict, float]:
    """The best trial whose exported model MEASURES within the latency limit (the estimate kept a margin; this
    makes sure): trials are measured in order of score, paired with the unpruned model, until one fits. Every
    incumbent was measured when it arrived; those measurements stand."""
    ranked = sorted(trials, key=lambda x: -x["score"])
    for trial in ranked:
        ms = trial.get("latency_ms_measured")
        if ms is None:
            ms = timer.measure(space.rates_vector(trial["rates"]))
        if log:
            log(f"trial {trial['trial']}: measured {ms:.2f} ms (estimated {trial['latency_ms_est']:.2f} ms)")
        if ms <= limit:
            return trial, ms
    raise UserError(f"none of the {len(ranked)} trials measured within the latency budget {limit:.2f} ms on this "
                    f"machine: the latency model is off here (delete {cache_dir()} to refit, or ask for a larger "
                    f"budget); nothing was saved, the trials are kept")


def plot_run(trials: list[dict], best: dict, names: list[str], run_dir: Path, score: str = DEFAULT_SCORE) -> None:
    """best-so-far score per trial, score vs FLOPs of all trials, and the best candidate's rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = "mAP50-95 (search slice)" if score == "map" else f"score: {score}"
    maps = np.array([t["score"] for t in trials])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(1, len(maps) + 1), np.maximum.accumulate(maps), drawstyle="steps-post", label="best so far")
    ax.scatter(np.arange(1, len(maps) + 1), maps, s=8, alpha=0.5, label="trial")
    ax.set(xlabel="trial", ylabel=label, title="search progress")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "progress.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter([t["flops_ratio"] for t in trials], maps, s=10)
    ax.scatter([best["flops_ratio"]], [best["score"]], s=40, c="red", label="best")
    ax.set(xlabel="FLOPs kept (fraction)", ylabel=label, title="trials")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "map_vs_flops.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.16), 3.5))
    ax.bar(range(len(names)), [best["rates"][n] for n in names])
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=5)
    ax.set(ylabel="prune rate (fraction removed)", title="best candidate: rate per group")
    fig.tight_layout()
    fig.savefig(run_dir / "best_rates.png", dpi=110)
    plt.close(fig)


def _write_json(path: Path, obj: dict) -> None:
    _write_text(path, json.dumps(obj, indent=2))


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
