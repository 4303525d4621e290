"""`yoloprune demo`: the whole pipeline on the embedded default, offline, with an HTML report.

groups -> short search -> pruned model -> brief fine-tune -> mAP on the test split ->
ONNX Runtime latency of original vs pruned -> table + report.html (plots and tables inline).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from yoloprune import api
from yoloprune.atomic import write_text_atomic
from yoloprune.default.problem import DEFAULT_WEIGHTS, default_dataset
from yoloprune.devices import resolve_device
from yoloprune.errors import UserError

FULL = {"trials": 40, "val_images": 100, "calib_images": 128, "epochs": 2, "fraction": 0.5, "test_images": 300,
        "bench_runs": 30}
QUICK = {"trials": 4, "val_images": 24, "calib_images": 32, "epochs": 1, "fraction": 0.02, "test_images": 48,
         "bench_runs": 5}
DEMO_TARGET_FLOPS = 0.5


def run_demo(out_dir: str | Path = "runs/demo", quick: bool = False, log=lambda msg: None,
             device: str | None = None) -> dict:
    """Run the demo (search, fine-tune and scoring on `device`; timing on ONNX Runtime's CPU); returns the summary
    (also in summary.json and report.html under `out_dir`)."""
    resolve_device(device)  # a device that cannot hold here fails before any work
    if not DEFAULT_WEIGHTS.exists():
        raise UserError(f"default weights missing: {DEFAULT_WEIGHTS} (train them with scripts/train_default.py)")
    p = QUICK if quick else FULL
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log("generating (or reusing) the synthetic shapes data set")
    data = default_dataset()
    loaded = api.load(DEFAULT_WEIGHTS)
    space = api.analyse(loaded)
    log(f"{len(space.groups)} prunable groups, {api.prunable_flops_share(space):.0%} of conv FLOPs prunable")

    log(f"searching per-group rates at {DEMO_TARGET_FLOPS:.0%} FLOPs (--trials {p['trials']})")
    summary = api.search(DEFAULT_WEIGHTS, data.yaml_path, DEMO_TARGET_FLOPS, trials=p["trials"],
                         val_images=p["val_images"], calib_images=p["calib_images"], project=str(out / "search"),
                         device=device, on_trial=lambda t, best, n: log(trial_line(t, best, n)))
    log(regime_line(summary))
    pruned = Path(summary["pruned"])
    log(f"fine-tuning the pruned model ({p['epochs']} epoch(s) on {p['fraction']:.0%} of train)")
    tuned = api.finetune(pruned, data.yaml_path, p["epochs"], fraction=p["fraction"], project=str(out / "finetune"),
                     name="exp", exist_ok=True, verbose=False, workers=0, batch=16, device=device)

    log("scoring original, pruned and fine-tuned models on the test split")
    rows = []
    for label, w in (("original", DEFAULT_WEIGHTS), ("pruned", pruned), ("pruned + fine-tuned", tuned)):
        r = api.evaluate(w, data.yaml_path, split="test", val_images=p["test_images"], device=device)
        rows.append({"model": label, "weights": str(w), "map50_95": r.map50_95, "map50": r.map50})
    log("timing the three models side by side in ONNX Runtime")
    bench = api.bench([r["weights"] for r in rows], loaded.imgsz, (1,), runs=p["bench_runs"], warmup=3)
    for row, m in zip(rows, bench):  # each model measured on its own
        row.update(flops=m.flops, params=m.params, p50_ms=m.latency[1]["p50_ms"], speedup=m.latency[1]["speedup"])
    result = {"out_dir": str(out), "target_flops": DEMO_TARGET_FLOPS, "search": summary, "table": rows,
              "report": str(out / "report.html")}
    write_text_atomic(out / "summary.json", json.dumps(result, indent=2))
    write_report(result, Path(summary["run_dir"]), out / "report.html")
    return result


def trial_line(trial: dict, best: dict | None, total: int) -> str:
    """One search trial; `best` is None while a scan has only probed groups (nothing on the budget yet)."""
    lead = "scanning" if best is None else f"best {best['map50_95']:.4f}"
    return f"  trial {trial['trial'] + 1}/{total} ({trial['phase']}): mAP50-95 {trial['map50_95']:.4f} ({lead})"


def regime_line(summary: dict) -> str:
    """Which regime the search found itself in, and what that means."""
    share = summary.get("best_initial_share")
    if share is None:
        return "regime: unscored (the unpruned model scores 0 on the search slice)"
    kept = f"the best first on-budget candidate keeps {share:.0%} of the unpruned mAP"
    if summary["regime"] == "redundant":
        return f"regime: redundant ({kept}): scoring candidates without retraining has signal here"
    return (f"regime: collapsed ({kept}): scores without retraining are small here; if the search's best stays low, "
            f"compare staged pruning (--stages)")


def format_table(rows: list[dict]) -> list[str]:
    lines = [f"{'model':<22}{'GFLOPs':>8}{'params M':>10}{'ORT 1T ms':>11}{'speedup':>9}{'mAP50-95':>10}{'mAP50':>8}"]
    for r in rows:
        lines.append(f"{r['model']:<22}{r['flops'] / 1e9:>8.3f}{r['params'] / 1e6:>10.3f}{r['p50_ms']:>11.2f}"
                     f"{r['speedup']:>9.2f}{r['map50_95']:>10.4f}{r['map50']:>8.4f}")
    return lines


def write_report(result: dict, run_dir: Path, path: Path) -> None:
    """A self-contained HTML page: the results table, the search plots, the best rates."""
    def img(name: str) -> str:
        data = base64.b64encode((run_dir / name).read_bytes()).decode()
        return f'<figure><img src="data:image/png;base64,{data}" alt="{name}"><figcaption>{name}</figcaption></figure>'

    head = "".join(f"<th>{h}</th>" for h in ("model", "GFLOPs", "params (M)", "ORT 1-thread p50 (ms)", "speedup",
                                              "mAP50-95", "mAP50"))
    body = "".join(
        f"<tr><td>{html.escape(r['model'])}</td><td>{r['flops'] / 1e9:.3f}</td><td>{r['params'] / 1e6:.3f}</td>"
        f"<td>{r['p50_ms']:.2f}</td><td>{r['speedup']:.2f}</td><td>{r['map50_95']:.4f}</td><td>{r['map50']:.4f}</td></tr>"
        for r in result["table"])
    s = result["search"]
    rates = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>" for k, v in s["best"]["rates"].items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>yoloprune demo</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}img{{max-width:100%}}</style></head><body>
<h1>yoloprune demo</h1>
<p>Default detector on the synthetic shapes data, searched at {result['target_flops']:.0%} FLOPs with
{s['trials']} trials ({html.escape(s['strategy'])}), run folder <code>{html.escape(s['run_dir'])}</code>.
mAP on the test split (pycocotools); latency in ONNX Runtime on this CPU.</p>
<p>{html.escape(regime_line(s))}. Redundant models (COCO l-size models, this default) can be scored
without retraining; small converged models cut to deep budgets collapse and need the staged search
(<code>yoloprune search --stages K</code>, a search and a recovery fine-tune per step).</p>
<table><tr>{head}</tr>{body}</table>
<h2>Search</h2>{img('progress.png')}{img('map_vs_flops.png')}{img('best_rates.png')}
<h2>Best rates (fraction of channels removed)</h2><table>{rates}</table></body></html>"""
    path.write_text(page)
