"""What a search run reports beyond its trials: the regime it found itself in, and its plots."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from yoloprune.evaluation.evaluator import TrialEvaluator
from yoloprune.evaluation.metric import evaluate
from yoloprune.evaluation.scores import DEFAULT_SCORE

COLLAPSE_SHARE = 0.2  # the best initial candidate keeps less of the unpruned mAP: the collapsed regime


def unpruned_map(loaded, evaluator: TrialEvaluator) -> float:
    """The unpruned model's mAP50-95 on the search slice (its own BN statistics)."""
    model = copy.deepcopy(loaded.model).to(evaluator.device)
    return evaluate(model, evaluator.search, evaluator.imgsz, evaluator.batch, evaluator.search_images).map50_95


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


def plot_front(front: dict, run_dir: Path) -> None:
    """front.png: the front's mAP against its cost, the uniform-rate trials beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    pts = front["points"]
    ax.plot([p["cost"] for p in pts], [p["score"] for p in pts], "o-", drawstyle="steps-post", ms=4, label="front")
    if front["uniform"]:
        ax.plot([u["cost"] for u in front["uniform"]], [u["score"] for u in front["uniform"]], "s--", ms=4,
                label="uniform rates")
    ax.set(xlabel=front["cost_unit"], ylabel="mAP50-95 (search slice)",
           title=f"front: {len(pts)} points, hypervolume {front['hypervolume']:.4f}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "front.png", dpi=110)
    plt.close(fig)


def pick_limit(front: str) -> str:
    """The `pick` limit flag that reads naturally on this front."""
    return "--target-flops F" if front == "flops" else "--max-latency-ms L (or --min-speedup S)"


def write_front_report(front: dict, summary: dict, run_dir: Path) -> None:
    """report.html: the front plot inline and one table row per front point (what `yoloprune pick` chooses from)."""
    import base64
    import html

    from yoloprune.atomic import write_text_atomic

    image = base64.b64encode((run_dir / "front.png").read_bytes()).decode()
    rows = "".join(
        f"<tr><td>{p['trial']}</td><td>{p['flops_ratio']:.3f}</td>"
        f"<td>{'' if p['latency_ms_est'] is None else round(p['latency_ms_est'], 2)}</td>"
        f"<td>{p['map50_95']:.4f}</td><td>{p['map50']:.4f}</td><td>{html.escape(p['phase'])}</td></tr>"
        for p in front["points"])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>yoloprune front</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td,th{{padding:2px 10px;text-align:right}}</style>
</head><body><h1>mAP against {html.escape(front['cost_unit'])}</h1>
<p>{summary['trials']} trials, run folder <code>{html.escape(summary['run_dir'])}</code>; {len(front['points'])} points
on the front, hypervolume {front['hypervolume']:.4f} (reference: cost {front['reference']['cost']:.4g}, mAP 0).
Scores are on the search slice after BN recalibration, without fine-tuning. Take one with
<code>yoloprune pick --run {html.escape(summary['run_dir'])} {pick_limit(front['front'])} --out model.pt</code>.</p>
<img src="data:image/png;base64,{image}" alt="front">
<table><tr><th>trial</th><th>FLOPs kept</th><th>latency est. (ms)</th><th>mAP50-95</th><th>mAP50</th>
<th>phase</th></tr>{rows}</table></body></html>"""
    write_text_atomic(run_dir / "report.html", page)
