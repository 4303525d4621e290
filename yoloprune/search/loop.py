"""The search loop: propose rates, prune, recalibrate, score, log; then re-check and save the best.

Run folders are `runs/search/expN` (store.py). Each finished trial is appended to
`trials.jsonl` before the next starts; `resume=True` continues the named (or latest) run from
its log and refuses when the weights, data or budget differ.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from yoloprune import classic
from yoloprune.checkpoint import file_sha256, load, save_pruned
from yoloprune.devices import resolve_device
from yoloprune.errors import UserError
from yoloprune.evaluation.data import check_classes
from yoloprune.evaluation.evaluator import TrialEvaluator
from yoloprune.latency.model import LOCAL_POINTS, LatencyModel, PairedTimer, cache_dir, calibrated, latency_model
from yoloprune.search.budget import Budget
from yoloprune.search.config import IDENTITY, LATENCY_IDENTITY, SearchConfig, check_config
from yoloprune.search.criteria import AUTO, choose_criteria
from yoloprune.search.executors import CandidateScorer, LocalPool, RayPool, ScorerSpec
from yoloprune.search.pareto import (
    FRONT_STRATEGIES,
    auto_front_strategy,
    front_summary,
    non_dominated,
)
from yoloprune.search.report import classify_regime, plot_front, plot_run, unpruned_map, write_front_report
from yoloprune.search.store import RunStore, run_dir_for
from yoloprune.search.strategies import (
    AUTO_STRATEGY,
    SCAN_PHASE,
    STRATEGY_CLASSES,
    SearchContext,
    Strategy,
    auto_strategy,
    on_budget,
)
from yoloprune.structure.groups import analyse
from yoloprune.structure.importance import effective_criterion, unit_scores
from yoloprune.structure.pruner import prune_by_rates

MIN_BINDING_CUT = 0.02  # a latency budget must ask for at least this much less than the unpruned model measures
FRONT_MEASURE_SPACING = 0.1  # a front search measures a new front point unless one this close (share of range) was


class BudgetDoesNotBind(UserError):
    """The latency budget is at or above what the unpruned model measures: every trial would be that model."""


def run_search(cfg: SearchConfig, on_trial: Callable[[dict, dict, int], None] | None = None,
               log: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) a search and return its summary (also written to summary.json)."""
    check_config(cfg)
    loaded = load(cfg.weights, cfg.imgsz)
    classic.refuse(loaded.model, cfg.classic_unsupported())
    space = analyse(loaded.model, loaded.imgsz, cfg.round_to)
    if log and effective_criterion(space, cfg.criterion) != cfg.criterion:
        log(f"criterion '{cfg.criterion}': {cfg.weights} has no BatchNorm; ranking channels by "
            f"'{effective_criterion(space, cfg.criterion)}' instead")
    if not str(cfg.data).endswith(".json"):
        check_classes(loaded.model.names, cfg.data)  # before anything is written
    sha = file_sha256(cfg.weights)
    store = RunStore(run_dir_for(cfg.project, cfg.name, cfg.resume))
    auto = cfg.strategy == AUTO_STRATEGY
    if auto:
        cfg = replace(cfg, strategy=resolve_strategy(cfg, store, len(space.groups)))
    strategy_cls = FRONT_STRATEGIES[cfg.strategy] if cfg.pareto else STRATEGY_CLASSES[cfg.strategy]
    total = strategy_cls.evaluations(cfg.trials, len(space.groups))  # too few trials for the strategy: refused here
    meta = {**asdict(cfg), "imgsz": loaded.imgsz, "trials": total, "weights_sha256": sha, "groups": space.names,
            "weights_resolved": str(Path(cfg.weights).resolve()), "data_resolved": str(Path(cfg.data).resolve())}
    bounded = cfg.max_latency_ms is not None or cfg.min_speedup is not None
    timed = bounded or cfg.pareto == "latency"
    old = store.check_identity(meta, IDENTITY + (LATENCY_IDENTITY if timed else ())) if cfg.resume else {}
    if cfg.target_flops is not None:
        Budget(space, cfg.target_flops)  # an impossible FLOPs budget fails before minutes of latency fitting
    if auto and log:
        log(f"strategy auto: {cfg.strategy} ({cfg.trials} trials, {len(space.groups)} groups)")
    latency, limit = None, cfg.max_latency_ms
    # a resumed run measures in its first run's unit: old measurements, its latency model and its limit stay valid
    timer = PairedTimer(loaded, space, cfg.latency_threads, reference_ms=old.get("unpruned_latency_ms")) if timed \
        else None
    try:
        if timed:
            limit = latency_limit(cfg, timer.unpruned_ms, log) if bounded else None
            latency = (LatencyModel.load(store.path("latency_model.json")) if cfg.resume and
                       store.has("latency_model.json") else latency_model(timer, sha, cfg.latency_models, log=log))
            meta["unpruned_latency_ms"] = timer.unpruned_ms
        budget = Budget(space, cfg.target_flops, latency=latency, max_latency_ms=limit, front=cfg.pareto)
        store.write_json("meta.json", meta)
        if latency:
            store.write_json("latency_model.json", asdict(latency))
        return _search(cfg, loaded, space, budget, timer, store, strategy_cls, total, on_trial, log)
    finally:
        if timer:
            timer.close()


def resolve_strategy(cfg: SearchConfig, store: RunStore, n_groups: int) -> str:
    """What --strategy auto runs here; a resumed run keeps the strategy it was started with."""
    if cfg.resume and store.has("meta.json"):
        return store.read_json("meta.json")["strategy"]
    if cfg.pareto:
        return auto_front_strategy(cfg.trials, n_groups)
    return auto_strategy(cfg.trials, n_groups, cfg.max_latency_ms is None and cfg.min_speedup is None)


def latency_limit(cfg: SearchConfig, unpruned_ms: float, log=None) -> float:
    """The ms budget (the tighter of --max-latency-ms and --min-speedup); refused unless it binds."""
    limit = min(cfg.max_latency_ms or np.inf, unpruned_ms / cfg.min_speedup if cfg.min_speedup else np.inf)
    if limit > unpruned_ms * (1.0 - MIN_BINDING_CUT):
        raise BudgetDoesNotBind(f"the latency budget {limit:.2f} ms does not bind: the unpruned model measures "
                        f"{unpruned_ms:.2f} ms here ({cfg.latency_threads} thread(s)); ask for at least "
                        f"{MIN_BINDING_CUT:.0%} less (--max-latency-ms below {unpruned_ms * (1 - MIN_BINDING_CUT):.2f}"
                        f" or --min-speedup above {1 / (1 - MIN_BINDING_CUT):.2f})")
    if log and cfg.min_speedup is not None:
        log(f"--min-speedup {cfg.min_speedup}: the unpruned model measures {unpruned_ms:.2f} ms "
            f"({cfg.latency_threads} thread(s)); the budget is {limit:.2f} ms")
    return float(limit)


def _search(cfg: SearchConfig, loaded, space, budget: Budget, timer: PairedTimer | None, store: RunStore,
            strategy_cls: type[Strategy], total: int, on_trial, log) -> dict:
    """The trial loop of `run_search` (resumed from the run's trial log), then the final check."""
    evaluator = TrialEvaluator(cfg.data, loaded.model.names, loaded.imgsz, cfg.val_images, cfg.calib_images,
                               recalibrate=cfg.recalibrate, score=cfg.score, reference=loaded.model,
                               slice_seed=cfg.slice_seed, device=resolve_device(cfg.device))
    cfg = replace(cfg, criterion=_criterion(cfg, loaded, space, evaluator, store, log))
    scores = unit_scores(space, cfg.criterion)
    strategy = strategy_cls(SearchContext(space, budget, scores, cfg.seed, total))
    regime = None
    trials = store.trials()
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
            while free and pool.idle() and strategy.ready(free[0], len(proposed)):
                t0 = time.perf_counter()
                t = free.pop(0)
                pending = np.array([space.rates_vector(r) for r in pool.in_flight()]) if proposed else None
                history = np.array([space.rates_vector(x["rates"]) for x in trials]).reshape(-1, len(space.groups))
                rates, phase = strategy.propose(history, np.array([x["score"] for x in trials]), t, pending)
                proposed[t] = rates, phase, time.perf_counter() - t0
                pool.submit(t, dict(zip(space.names, map(float, rates))))
            t, result = pool.next_result()
            rates, phase, propose_s = proposed.pop(t)
            trial = {"trial": t, "phase": phase, "rates": dict(zip(space.names, map(float, rates))),
                     "flops_ratio": float(budget.ratio(rates[None])[0]),
                     "latency_ms_est": float(budget.latency.predict(space, rates[None])[0]) if timer else None,
                     **result, "propose_seconds": propose_s}
            if timer and phase != SCAN_PHASE and (_measured(trials) < LOCAL_POINTS or
                                                  _leads(trial, trials, cfg, budget, space)):
                # the first trials, then every new incumbent (front point): the points that matter
                trial["latency_ms_measured"] = timer.measure(rates)
                _calibrate(budget, fit, space, trials + [trial], log)
            store.append_trial(trial)
            trials.append(trial)
            if on_trial:
                on_trial(trial, max(on_budget(trials), key=lambda x: x["score"], default=None), total)
            if len(trials) == strategy.n_init and (first := on_budget(trials)) and not cfg.pareto:
                regime = classify_regime([x["map50_95"] for x in first], unpruned_map(loaded, evaluator), log)
    finally:
        pool.close()
    search_seconds = time.perf_counter() - start
    scan = strategy.report(np.array([space.rates_vector(x["rates"]) for x in trials]),
                           np.array([x["score"] for x in trials]), space.names)
    if scan:
        store.write_json("sensitivity.json", scan)
    first = on_budget(trials[:strategy.n_init]) or on_budget(trials)
    if not cfg.pareto:  # a front's initial design spans its whole range: no regime to read from it
        regime = regime or classify_regime([x["map50_95"] for x in first], unpruned_map(loaded, evaluator))
    return _finish(cfg, loaded, space, evaluator, trials, store, search_seconds, regime, budget, timer, log,
                   fresh=len(trials) - len(done), workers=pool.workers)


def _criterion(cfg: SearchConfig, loaded, space, evaluator: TrialEvaluator, store: RunStore, log):
    """cfg.criterion, or for `auto` the run's {group: criterion} (chosen once, kept in criteria.json)."""
    if cfg.criterion != AUTO:
        return cfg.criterion
    if store.has("criteria.json"):
        return store.read_json("criteria.json")
    model = copy.deepcopy(loaded.model).to(evaluator.device)  # probed where the images are
    choice = choose_criteria(model, space, evaluator.search_images.pixels, log)
    store.write_json("criteria.json", choice)
    return choice


def _leads(trial: dict, trials: list[dict], cfg: SearchConfig, budget: Budget, space) -> bool:
    """Whether a new trial is the best result so far; for a front search, a point of the front (by the estimate as
    calibrated now) with no measured trial within FRONT_MEASURE_SPACING of the cost range: the calibration needs
    measurements spread along the front, not one per front point."""
    if cfg.pareto:
        rates = np.array([space.rates_vector(t["rates"]) for t in trials + [trial]])
        costs, scores = budget.cost(rates), np.array([t["score"] for t in trials + [trial]])
        if len(trials) not in non_dominated(costs, scores):
            return False
        lo, hi = budget.cost_range()
        measured = [c for c, t in zip(costs, trials) if t.get("latency_ms_measured") is not None]
        return all(abs(c - costs[-1]) > FRONT_MEASURE_SPACING * (hi - lo) for c in measured)
    results = on_budget(trials)
    return not results or trial["score"] > max(x["score"] for x in results)


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
        last = measured[-1]
        log(f"latency: trial {last['trial']} measured {last['latency_ms_measured']:.2f} ms; estimate now "
            f"x{budget.latency.scale:.3f} of the fit, margin {budget.latency.margin:.1%} ({len(measured)} measured)")


def _pool(cfg: SearchConfig, loaded, space, evaluator: TrialEvaluator, total: int, log):
    """This process for one worker (or a one-trial baseline), else Ray actors."""
    spec = ScorerSpec(cfg.weights, cfg.data, loaded.imgsz, cfg.round_to, cfg.criterion, cfg.val_images,
                      cfg.calib_images, cfg.recalibrate, cfg.score, cfg.slice_seed, evaluator.device)
    if cfg.workers == 1 or total == 1:
        return LocalPool(CandidateScorer(spec, loaded, space, evaluator), cfg.worker_cpus)
    return RayPool(spec, min(cfg.workers, total), cfg.worker_cpus, cfg.worker_gpus, cfg.ray_address, log)


def _finish(cfg, loaded, space, evaluator, trials, store: RunStore, search_seconds: float, regime: dict,
            budget: Budget, timer: PairedTimer | None, log=None, fresh: int = 0, workers: int = 1) -> dict:
    """Re-check, save and summarise the best trial; `fresh` trials ran in this invocation, in `search_seconds`."""
    if cfg.pareto:
        return _finish_front(cfg, space, trials, store, search_seconds, budget, timer, fresh, workers)
    results = on_budget(trials)
    best, measured_ms = max(results, key=lambda x: x["score"]), None
    latency = budget.latency
    if latency:
        best, measured_ms = _fastest_enough(budget.max_latency_ms, space, results, timer, log)
    result = prune_by_rates(loaded.model, space, best["rates"], cfg.criterion)
    final = evaluator.final_check(result.model.to(evaluator.device))  # recalibrates BN in place: the saved model
    result.model.cpu()                                                 # keeps those statistics
    out = save_pruned(result.model, loaded, store.path("pruned.pt"),
                      {**result.provenance(), "search": str(store.dir), "strategy": cfg.strategy})
    store.write_text("best_rates.yaml", yaml.safe_dump({k: round(v, 6) for k, v in best["rates"].items()},
                                                       sort_keys=False))
    propose = sum(t["propose_seconds"] for t in trials[len(trials) - fresh:])
    summary = {
        "run_dir": str(store.dir), "strategy": cfg.strategy, "criterion": result.criterion,
        "target_flops": cfg.target_flops, "trials": len(trials), "slice_seed": cfg.slice_seed,
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
        summary.update(_finetune_best(cfg, out, evaluator, store.dir))
    store.write_json("summary.json", summary)
    plot_run(results, best, space.names, store.dir, cfg.score)
    return summary


def _finish_front(cfg, space, trials, store: RunStore, search_seconds: float, budget: Budget,
                  timer: PairedTimer | None, fresh: int, workers: int) -> dict:
    """front.json (every non-dominated trial, its cost by the final latency estimate), its plot and report."""
    front = front_summary(trials, budget, space)
    store.write_json("front.json", front)
    summary = {"run_dir": str(store.dir), "strategy": cfg.strategy, "pareto": cfg.pareto, "criterion":
               cfg.criterion, "target_flops": cfg.target_flops, "max_latency_ms": budget.max_latency_ms,
               "trials": len(trials), "slice_seed": cfg.slice_seed, "score": cfg.score,
               "front_points": len(front["points"]), "hypervolume": front["hypervolume"],
               "reference": front["reference"], "search_seconds": search_seconds,
               "unpruned_latency_ms": timer.unpruned_ms if timer else None,
               "latency_threads": cfg.latency_threads if timer else None, "workers": workers,
               "trials_per_hour": fresh / search_seconds * 3600 if fresh else None,
               "mean_trial_eval_seconds": float(np.mean([t["eval_seconds"] for t in trials]))}
    store.write_json("summary.json", summary)
    plot_front(front, store.dir)
    write_front_report(front, summary, store.dir)
    return summary


def _finetune_best(cfg, pruned: Path, evaluator, run_dir: Path) -> dict:
    """Fine-tune the saved best candidate with Ultralytics' trainer; its final check keeps the trained BN."""
    from yoloprune.training.finetune import finetune

    tuned = finetune(pruned, cfg.data, cfg.finetune_epochs, distill=cfg.distill_from,
                     distill_weight=cfg.distill_weight, fraction=cfg.finetune_fraction,
                     lr0=cfg.finetune_lr0, device=cfg.device,
                     project=str(run_dir), name="finetune", exist_ok=True,
                     workers=2)  # a resumed run restarts an unfinished fine-tune
    after = evaluator.final_check(load(tuned).model.to(evaluator.device), recalibrate=False)
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
