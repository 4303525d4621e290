"""`yoloprune pick`: the best point of a front search within a limit, pruned by its recorded rates, recalibrated,
re-checked on the final-check images and saved as a stock checkpoint (optionally fine-tuned).

A FLOPs limit is read off the trials (on a FLOPs front, the best trial within it is a front point).
A latency limit is measured, as the latency search does (ONNX Runtime, paired with the unpruned
model): along the front, ordered by cost, a bisection measures about log2(points) models and returns
the most accurate one that measured within the limit (it assumes latency grows along the front,
true of a latency front by construction and of a FLOPs front up to the latency model's scatter).
On a scan front (`--strategy sensitivity`) whose range no latency bound limited, the scan's allocation at a
limit on the front's own axis is scored too (on a latency front: placed by the run's latency model,
recalibrated on its measured points, then measured, once more a step lower if it measured over), and the
better of the two is taken.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from yoloprune.checkpoint import file_sha256, load, save_pruned
from yoloprune.devices import resolve_device
from yoloprune.errors import UserError
from yoloprune.evaluation.evaluator import TrialEvaluator
from yoloprune.latency.model import PairedTimer
from yoloprune.search.criteria import AUTO
from yoloprune.search.pareto import ScanFront
from yoloprune.search.store import RunStore
from yoloprune.structure.groups import analyse
from yoloprune.structure.pruner import prune_by_rates


def check_limits(target_flops: float | None, max_latency_ms: float | None, min_speedup: float | None) -> None:
    """Exactly one limit, in its range."""
    given = [v for v in (target_flops, max_latency_ms, min_speedup) if v is not None]
    if len(given) != 1:
        raise UserError("give exactly one of --target-flops, --max-latency-ms, --min-speedup")
    if target_flops is not None and not 0.0 < target_flops <= 1.0:
        raise UserError(f"--target-flops {target_flops} must lie in (0, 1]: it is the fraction of FLOPs KEPT")
    if max_latency_ms is not None and max_latency_ms <= 0:
        raise UserError(f"--max-latency-ms {max_latency_ms} must be > 0")
    if min_speedup is not None and min_speedup <= 1.0:
        raise UserError(f"--min-speedup {min_speedup} must be > 1: the measured speedup over the unpruned model")


def open_front(run_dir: str | Path) -> tuple[RunStore, dict, dict]:
    """(store, meta, front) of a finished front search whose model and data are still in place; refused with one
    line otherwise."""
    store = RunStore(run_dir)
    if not store.has("meta.json"):
        raise UserError(f"no search run in {run_dir} (meta.json is missing)")
    if not store.has("front.json"):
        raise UserError(f"{run_dir} holds no front: pick takes a point of a `search --pareto flops|latency` run that "
                        f"has finished (a single-budget search saves its model in pruned.pt)")
    meta, front = store.read_json("meta.json"), store.read_json("front.json")
    if not front["points"]:
        raise UserError(f"{run_dir}/front.json has no points")
    for key in ("weights", "data"):  # absolute since they were recorded; as typed in older runs
        meta[key] = meta.get(f"{key}_resolved", meta[key])
        if not Path(meta[key]).is_file():
            raise UserError(f"the {key} file {meta[key]} that {run_dir} searched is gone (pick runs from where it "
                            f"can see it)")
    if file_sha256(meta["weights"]) != meta["weights_sha256"]:
        raise UserError(f"{meta['weights']} has changed since {run_dir} searched it: its front no longer applies")
    if meta["criterion"] == AUTO and not store.has("criteria.json"):
        raise UserError(f"{run_dir} searched with --criterion auto but its criteria.json is missing")
    return store, meta, front


def pick(run_dir: str | Path, out: str | Path, target_flops: float | None = None,
         max_latency_ms: float | None = None, min_speedup: float | None = None, finetune_epochs: int = 0,
         latency_threads: int | None = None, device: str | None = None,
         log: Callable[[str], None] | None = None) -> dict:
    """Prune, re-check and save the best front point of `run_dir` within the limit; returns what `--json` prints."""
    check_limits(target_flops, max_latency_ms, min_speedup)
    if finetune_epochs < 0:
        raise UserError(f"--finetune-epochs must be >= 0, got {finetune_epochs}")
    out = Path(out)
    if out.suffix != ".pt":
        raise UserError(f"--out must name a .pt checkpoint, got {out}")
    cores = os.cpu_count() or 1
    if latency_threads is not None and not 1 <= latency_threads <= cores:
        raise UserError(f"--latency-threads {latency_threads} must lie in 1..{cores} (visible cores)")
    device = resolve_device(device)  # a device that cannot hold is refused before minutes of measuring
    store, meta, front = open_front(run_dir)
    loaded = load(meta["weights"], meta["imgsz"])
    space = analyse(loaded.model, loaded.imgsz, meta["round_to"])
    points, measured_ms, unpruned_ms, threads = front["points"], None, None, None
    criterion = store.read_json("criteria.json") if meta["criterion"] == AUTO else meta["criterion"]
    evaluator = TrialEvaluator(meta["data"], loaded.model.names, loaded.imgsz, meta["val_images"],
                               meta["calib_images"], recalibrate=meta["recalibrate"], score=meta["score"],
                               reference=loaded.model, slice_seed=meta["slice_seed"], device=device)
    if target_flops is not None:
        trials = store.trials()
        within = [t for t in trials if t["flops_ratio"] <= target_flops]
        if not within:
            low = min(trials, key=lambda t: t["flops_ratio"])
            raise UserError(f"no trial keeps at most {target_flops:.1%} of the FLOPs: the cheapest, trial "
                            f"{low['trial']}, keeps {low['flops_ratio']:.1%} (mAP50-95 {low['map50_95']:.4f})")
        best = max(within, key=lambda t: t["score"])
        rates = scan_allocation(target_flops, meta, trials, space) if allocates(meta, "flops") else None
        if rates is not None:
            best = better_of(best, scored_allocation(rates, meta, loaded, space, criterion, evaluator),
                             f"at {target_flops:.1%} of the FLOPs", log)
    else:
        threads = latency_threads or meta["latency_threads"]
        timer = PairedTimer(loaded, space, threads)
        try:
            unpruned_ms = timer.unpruned_ms
            limit = min(max_latency_ms or float("inf"), unpruned_ms / min_speedup if min_speedup else float("inf"))
            best, measured_ms = fastest_within(points, limit, lambda p: timer.measure(space.rates_vector(p["rates"])),
                                               log)
            found = allocation_within(limit, timer, store, meta, space, log) if allocates(meta, "latency") else None
            if found is not None:
                taken = better_of(best, scored_allocation(found[0], meta, loaded, space, criterion, evaluator),
                                  f"measured {found[1]:.2f} ms", log)
                if taken is not best:
                    best, measured_ms = taken, found[1]
        finally:
            timer.close()
    result = prune_by_rates(loaded.model, space, best["rates"], criterion)
    final = evaluator.final_check(result.model.to(evaluator.device))  # recalibrates BN: the saved model keeps it
    result.model.cpu()
    saved = save_pruned(result.model, loaded, out, {**result.provenance(), "front": str(store.dir),
                                                     "trial": best["trial"]})
    payload = {"out": str(saved), "run_dir": str(store.dir), "trial": best["trial"], "rates": best["rates"],
               "flops_ratio": result.flops_after / result.flops_before, "params": result.params_after,
               "search_map50_95": best["map50_95"], "final_check_map50_95": final.map50_95,
               "final_check_map50": final.map50, "final_check_images": final.images,
               "measured_latency_ms": measured_ms, "unpruned_latency_ms": unpruned_ms,
               "latency_threads": threads if measured_ms is not None else None}
    if finetune_epochs:
        from yoloprune.training.finetune import finetune

        tuned = finetune(saved, meta["data"], finetune_epochs, device=device, project=str(out.parent),
                         name=f"{out.stem}-finetune", exist_ok=True, workers=2)
        after = evaluator.final_check(load(tuned).model.to(evaluator.device), recalibrate=False)
        payload.update({"finetuned": str(tuned), "finetune_epochs": finetune_epochs,
                        "finetuned_final_check_map50_95": after.map50_95})
    return payload


def timed_bound(meta: dict) -> bool:
    """Whether a run's range was bounded by latency (its allocation would need that bound's projection too)."""
    return meta.get("max_latency_ms") is not None or meta.get("min_speedup") is not None


def allocates(meta: dict, axis: str) -> bool:
    """Whether pick also offers the scan's allocation at a limit on `axis`: a scan front on that axis whose range no
    latency bound limited."""
    return meta["strategy"] == ScanFront.name and meta["pareto"] == axis and not timed_bound(meta)


def scan_allocation(level: float, meta: dict, trials: list[dict], space, latency=None) -> dict[str, float] | None:
    """The scan's allocation (rates by group) at `level` on the front's axis (FLOPs kept, or the run's estimated
    ms by `latency`), as the search would have placed it; None for a run whose scan never finished."""
    import numpy as np

    from yoloprune.search.budget import Budget
    from yoloprune.search.sensitivity import allocate, scan_scores
    from yoloprune.search.strategies import SearchContext

    budget = Budget(space, meta["target_flops"], latency=latency, front=meta["pareto"])  # the search's bound, if any
    plan = ScanFront(SearchContext(space, budget, {}, meta["seed"], meta["trials"])).plan
    history = np.array([space.rates_vector(t["rates"]) for t in trials])
    found = scan_scores(plan, history, np.array([t["score"] for t in trials], float))
    return None if found is None else dict(zip(space.names, map(float, allocate(budget, plan, found, level=level))))


def allocation_within(limit: float, timer: PairedTimer, store: RunStore, meta: dict, space,
                      log: Callable[[str], None] | None = None) -> tuple[dict[str, float], float] | None:
    """(rates, measured ms) of the scan's allocation that measures within `limit` (ms as measured now): placed
    by the run's latency model (recalibrated on the front's measured points) at the limit, and if it measures
    over, once more lower by the overshoot and the model's margin; None if both measure over (or no scan
    finished). A pick at another thread count than the search's relies on the unpruned ratio and the check."""
    import numpy as np

    from yoloprune.latency.model import LatencyModel, calibrated

    trials = store.trials()
    measured = [t for t in trials if t.get("latency_ms_measured") is not None]
    model = LatencyModel.load(store.path("latency_model.json"))
    if measured:
        model = calibrated(model, space, np.array([space.rates_vector(t["rates"]) for t in measured]),
                           np.array([t["latency_ms_measured"] for t in measured]))
    unit = meta["unpruned_latency_ms"] / timer.unpruned_ms  # the run's ms per ms measured now
    level = limit * unit
    for _ in range(2):
        rates = scan_allocation(level, meta, trials, space, latency=model)
        if rates is None:
            return None
        ms = timer.measure(space.rates_vector(rates))
        if log:
            log(f"the scan's allocation placed at {level / unit:.2f} ms: measured {ms:.2f} ms (limit {limit:.2f} ms)")
        if ms <= limit:
            return rates, ms
        level *= limit / ms * (1.0 - model.margin)
    return None


def scored_allocation(rates: dict[str, float], meta: dict, loaded, space, criterion,
                      evaluator: TrialEvaluator) -> dict:
    """`rates` scored on the search slice like a trial, recorded as a pick's candidate (`trial` None)."""
    from yoloprune.search.executors import CandidateScorer, ScorerSpec

    spec = ScorerSpec(meta["weights"], meta["data"], loaded.imgsz, meta["round_to"], criterion, meta["val_images"],
                      meta["calib_images"], meta["recalibrate"], meta["score"], meta["slice_seed"], evaluator.device)
    scored = CandidateScorer(spec, loaded, space, evaluator)(rates)
    return {"trial": None, "rates": rates, "flops_ratio": float(space.flops_ratio(space.rates_vector(rates)[None])[0]),
            **scored}


def better_of(best: dict, allocation: dict, where: str, log: Callable[[str], None] | None = None) -> dict:
    """The best front trial within the limit, or the scan's allocation at it if it scores higher."""
    if log:
        log(f"the scan's allocation ({where}): {allocation['flops_ratio']:.1%} of the FLOPs, score "
            f"{allocation['score']:.4f} (best trial within the limit: {best['trial']}, {best['flops_ratio']:.1%}, "
            f"{best['score']:.4f})")
    return allocation if allocation["score"] > best["score"] else best


def fastest_within(points: list[dict], limit: float, measure: Callable[[dict], float],
                   log: Callable[[str], None] | None = None) -> tuple[dict, float]:
    """The front point (points by increasing cost and score) of highest score that MEASURES within `limit` ms, by
    bisection on the assumption that latency grows along the front; only measured points are returned."""
    lo, hi, found = 0, len(points) - 1, None
    fastest: tuple[dict, float] | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        ms = measure(points[mid])
        if log:
            log(f"trial {points[mid]['trial']}: measured {ms:.2f} ms (limit {limit:.2f} ms)")
        if ms <= limit:
            found, lo = (points[mid], ms), mid + 1
        else:
            fastest = (points[mid], ms) if fastest is None or ms < fastest[1] else fastest
            hi = mid - 1
    if found is None:
        point, ms = fastest
        raise UserError(f"no front point measured within {limit:.2f} ms here: the fastest measured, trial "
                        f"{point['trial']} ({point['flops_ratio']:.1%} of the FLOPs), took {ms:.2f} ms")
    return found
