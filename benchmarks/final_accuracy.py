"""Accuracy after recovery: what a user ships, at equal training cost (issue: final-accuracy recipe).

Every row spends the same total of E training epochs on the full train split, counting
sparsify, recoveries and the fine-tune together, then is scored on 500 test images
(pycocotools mAP50-95, the same slice for every row):
  reference         the unpruned model fine-tuned E epochs
  uniform           uniform rates at the budget, fine-tuned E epochs
  hdbo              one-shot hdbo search (T trials), best candidate fine-tuned E epochs
  hdbo-auto         the same with --criterion auto (a pruning criterion per group)
  sensitivity       the peers' method instead of hdbo (a per-group scan, then equal loss per FLOP), T evaluations
  hdbo-distill      the same, the fine-tune distilling from the unpruned model (Ultralytics' weight, dis 6)
  hdbo-distill1     the same with the distillation loss weighted 1 (--distill-weight 1)
  sparsifyS         S epochs of network slimming, hdbo on the sparsified model, fine-tune E - S epochs
  sparsifyS-distill the same with a distilled fine-tune
  staged            --stages 2, each stage recovered E/2 epochs
--lr0 X runs every row's recoveries and fine-tune at that initial SGD rate (`search --finetune-lr0`; a
sparsify stage keeps its own default); by default at the shipped default for an E-epoch fine-tune. Units at another
rate than 0.002 (the only rate before the default depended on the length) end in /lrX.
One line per finished unit (model x row x budget x E x seed) in results/final_accuracy.jsonl, with the
validation curve by epoch of the last fine-tune; rerun to continue, --table-only to print.

    python benchmarks/final_accuracy.py --weights weights/yolov8-shapes-converged.pt --rows reference,hdbo
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import common
import numpy as np

from yoloprune import api
from yoloprune.default.problem import default_dataset
from yoloprune.training.finetune import default_lr0

CONVERGED = Path(__file__).resolve().parent.parent / "weights" / "yolov8-shapes-converged.pt"
ROWS = ("reference", "uniform", "hdbo", "hdbo-auto", "sensitivity", "hdbo-distill", "hdbo-distill1", "sparsify2",
        "sparsify2-distill", "sparsify4", "staged")
RUNS = Path("benchmarks/runs/final_accuracy")
UNSUFFIXED_LR0 = 0.002  # the rate of the units named without /lrX


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", default=str(CONVERGED))
    parser.add_argument("--budget", type=float, default=0.5, help="fraction of FLOPs kept")
    parser.add_argument("--epochs", type=int, default=10, help="total training epochs per row (E)")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--rows", default="reference,hdbo,sparsify2")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--lr0", type=float, default=None, help="fine-tune initial SGD rate (default: by length)")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    args.lr0 = args.lr0 or default_lr0(args.epochs)
    log = common.UnitLog("final_accuracy")
    model = Path(args.weights).stem
    if not args.table_only:
        data = str(default_dataset().yaml_path)
        for row in args.rows.split(","):
            if row not in ROWS:
                raise SystemExit(f"unknown row {row} (choose from {', '.join(ROWS)})")
            budget = 1.0 if row == "reference" else args.budget
            for seed in map(int, args.seeds.split(",")):
                unit = f"{model}/{row}/b{budget}/E{args.epochs}/s{seed}" + lr_suffix(args.lr0)
                if unit in log.done():
                    continue
                run = RUNS / unit.replace("/", "-")
                if row == "reference" or not (run / "meta.json").exists():
                    shutil.rmtree(run, ignore_errors=True)  # search rows resume a unit a killed session left
                t0 = time.perf_counter()
                result = run_row(row, seed, args, data, run)
                test = api.evaluate(result.pop("weights"), data, split="test", val_images=500)
                log.append(unit, {"model": model, "row": row, "budget": budget, "epochs": args.epochs,
                                  "trials": args.trials, "seed": seed, "lr0": args.lr0, "final_map50_95": test.map50_95,
                                  "final_map50": test.map50, **result, "wall_seconds": time.perf_counter() - t0})
                print(unit, round(test.map50_95, 4), flush=True)
    print_table(log.done(), model, args.budget, args.epochs, args.lr0)
    plot = plot_curves(log.done(), model, args.budget, args.epochs, args.lr0)
    if plot:
        print("curves:", plot)


def run_row(row: str, seed: int, args, data: str, run: Path) -> dict:
    """Train and prune one row; returns the final weights and what the row measured on the way."""
    if row == "reference":
        tuned = api.finetune(args.weights, data, args.epochs, project=str(run), name="finetune", workers=2,
                             lr0=args.lr0)
        return {"weights": str(tuned), "flops_ratio": 1.0, "curve": common.val_curve(tuned)}
    name, distilled, weight = row.split("-distill")[0], "-distill" in row, row.partition("-distill")[2]
    sparsify = int(name.removeprefix("sparsify")) if name.startswith("sparsify") else 0
    options = {"trials": args.trials, "seed": seed, "project": str(run.parent), "name": run.name,
               "resume": (run / "meta.json").exists(),
               "distill_from": args.weights if distilled else None,
               "distill_weight": float(weight) if weight else None,
               "strategy": name if name in ("uniform", "sensitivity") else "hdbo",
               "criterion": "auto" if name == "hdbo-auto" else "bn", "finetune_lr0": args.lr0}
    if name == "staged":
        s = api.search(args.weights, data, args.budget, stages=2, recover_epochs=args.epochs // 2, **options)
        last = s["stage_summaries"][-1]
        return {"weights": last["finetuned"], "flops_ratio": s["flops_ratio"], "params": s["params"],
                "stage_maps_before_recovery": [x["best"]["final_check_map50_95"] for x in s["stage_summaries"]],
                "curve": common.val_curve(Path(last["finetuned"]))}
    s = api.search(args.weights, data, args.budget, finetune_epochs=args.epochs - sparsify, sparsify_epochs=sparsify,
                   **options)
    extra = {"sparsify": {k: s["recipe"][k] for k in ("l1", "prunability", "sparsify_wrecked")}} if sparsify else {}
    return {"weights": s["finetuned"], "flops_ratio": s["best"]["flops_ratio"], "params": s["best"]["params"],
            "map50_95_before_finetune": s["best"]["final_check_map50_95"], "regime": s["regime"],
            "curve": common.val_curve(Path(s["finetuned"])), **extra}


def lr_suffix(lr0: float) -> str:
    return "" if lr0 == UNSUFFIXED_LR0 else f"/lr{lr0:g}"


def matching(rows: dict, model: str, name: str, budget: float, epochs: int, lr0: float) -> list[dict]:
    """The finished units of one row at this budget (the reference's at 1.0), E and rate, by seed."""
    wanted = 1.0 if name == "reference" else budget
    return sorted((r for r in rows.values() if (r["model"], r["row"], r["budget"], r["epochs"],
                                                 r.get("lr0", UNSUFFIXED_LR0)) == (model, name, wanted, epochs, lr0)),
                  key=lambda r: r["seed"])


def print_table(rows: dict, model: str, budget: float, epochs: int, lr0: float) -> None:
    print(f"{model}: {budget:.0%} FLOPs, E = {epochs} epochs, fine-tune lr0 {lr0:g}; "
          "final-check mAP50-95 on 500 test images")

    def finals(name: str) -> list[float]:
        return [r["final_map50_95"] for r in matching(rows, model, name, budget, epochs, lr0)]

    ref = finals("reference")
    print(f"{'row':<20}{'seeds':>6}{'mean':>8}{'std':>8}{'vs ref':>8}  per seed")
    for name in ROWS:
        v = finals(name)
        if v:
            gap = f"{(np.mean(v) - np.mean(ref)) * 100:+.1f}" if ref else ""
            print(f"{name:<20}{len(v):>6}{np.mean(v):>8.4f}{np.std(v):>8.4f}{gap:>8}  "
                  + " ".join(f"{x:.4f}" for x in v))


def plot_curves(rows: dict, model: str, budget: float, epochs: int, lr0: float) -> Path | None:
    """Validation mAP50-95 against the epoch of every row's last fine-tune (one line per seed), as a PNG beside
    the results; None when no unit of this setting recorded a curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = 0
    for i, name in enumerate(ROWS):
        for r in matching(rows, model, name, budget, epochs, lr0):
            curve = r.get("curve") or []
            if len(curve) == epochs:  # a staged or sparsify row's last fine-tune is shorter than E
                ax.plot(range(1, epochs + 1), curve, marker="o", ms=3, color=f"C{i}",
                        label=f"{name} (seed {r['seed']}): {r['final_map50_95']:.4f} on test")
                drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set(xlabel="fine-tune epoch", ylabel="val mAP50-95 (Ultralytics)",
           title=f"{model}, {budget:.0%} FLOPs, E = {epochs}, lr0 {lr0:g}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path = common.RESULTS / f"final_accuracy_curves_{model}_b{budget}_E{epochs}_lr{lr0:g}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

if __name__ == "__main__":
    main()
