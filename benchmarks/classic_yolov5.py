"""Classic YOLOv5 (ultralytics/yolov5 repository checkpoints) on the default problem (issue: classic checkpoints).

A classic yolov5n is trained briefly (E epochs at the default image size, from its YAML) by the
`yolov5` package's own train.py, then optionally C more epochs by yoloprune's classic fine-tune
(Ultralytics' trainer with the classic loss; its validation curve is recorded). On that checkpoint,
one line per finished unit in results/classic_yolov5.jsonl (rerun to continue):
  agreement   `yoloprune eval` against the classic val.py on the same 500 test images, with the same
              conf (0.001), IoU (0.7) and max_det (100)
  uniform     uniform rates at the budget, BN recalibrated, scored on the 500 test images, then fine-tuned
              F epochs (yoloprune's classic fine-tune) and scored again
  hdbo        a T-trial search at the budget (one unit per seed), its best scored and fine-tuned the same way

Training needs more of the classic package than loading does:
    pip install --no-deps yolov5==7.0.14 roboflow requests-toolbelt python-dotenv pillow-avif-plugin
The 2023 package meets today's stack through three shims, applied in this harness only: np.trapz (gone
in numpy 2.4) as np.trapezoid; its plotting font read from a local config folder (matplotlib's DejaVu
Sans) instead of downloaded; torch.load without weights_only (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1).

    python benchmarks/classic_yolov5.py --epochs 10 --seeds 0
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import common
import numpy as np

from yoloprune import api
from yoloprune.default.problem import DEFAULT_IMGSZ, default_dataset
from yoloprune.search.config import SearchConfig
from yoloprune.search.loop import run_search

RUNS = Path("benchmarks/runs/classic_yolov5").resolve()
CONF, IOU, MAX_DET = 0.001, 0.7, 100  # yoloprune's evaluation settings (evaluation/inference.py)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="yolov5n", help="classic model YAML name (without .yaml)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--budget", type=float, default=0.5, help="fraction of FLOPs kept")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--continue-epochs", type=int, default=0, help="more epochs by yoloprune's classic fine-tune")
    parser.add_argument("--data", default=None, help="dataset YAML (default: the embedded default's)")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    log = common.UnitLog("classic_yolov5")
    base = f"{args.model}/E{args.epochs}" + (f"+C{args.continue_epochs}" if args.continue_epochs else "")
    tail = f"b{args.budget}/F{args.finetune_epochs}"
    if not args.table_only:
        data = args.data or str(default_dataset().yaml_path)
        classic_shims()
        weights = train_unit(log, f"{args.model}/E{args.epochs}", args, data)
        if args.continue_epochs:
            weights = continue_unit(log, base, args, data, weights)
        if f"{base}/agreement" not in log.done():
            log.append(f"{base}/agreement", agreement(weights, data))
        units = [("uniform", f"{base}/uniform/{tail}", 0)]
        units += [("hdbo", f"{base}/hdbo/{tail}/T{args.trials}/s{s}", int(s)) for s in args.seeds.split(",")]
        for strategy, unit, seed in units:
            if unit in log.done():
                continue
            run = RUNS / unit.replace("/", "-")
            shutil.rmtree(run, ignore_errors=True)
            s = run_search(SearchConfig(weights, data, args.budget, trials=args.trials, strategy=strategy, seed=seed,
                                        project=str(run.parent), name=run.name,
                                        finetune_epochs=args.finetune_epochs))
            log.append(unit, {"model": args.model, "epochs": args.epochs, "strategy": strategy, "seed": seed,
                              "budget": args.budget, "trials": s["trials"], "flops_ratio": s["best"]["flops_ratio"],
                              "search_map50_95": s["best"]["map50_95"],
                              "final_check_map50_95": s["best"]["final_check_map50_95"],
                              "finetune_epochs": args.finetune_epochs,
                              "finetuned_final_check_map50_95": s.get("finetuned_final_check_map50_95")})
            print(unit, round(s["best"]["final_check_map50_95"], 4), flush=True)
    print_table(log.done(), base, tail)


def classic_shims() -> None:
    """What the 2023 `yolov5` package needs on today's stack (this harness only; see the module docstring)."""
    import matplotlib

    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid
    fonts = RUNS / "config"
    fonts.mkdir(parents=True, exist_ok=True)
    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (fonts / name).exists():
            shutil.copy(font, fonts / name)
    os.environ["YOLOV5_CONFIG_DIR"] = str(fonts)


def training_unit(log: common.UnitLog, unit: str, train) -> str:
    """Run `train(run folder)` -> (weights, record) once per unit; returns the weights (logged by a finished unit)."""
    if unit in log.done():
        return log.done()[unit]["weights"]
    run = RUNS / unit.replace("/", "-")
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    weights, record = train(run)
    log.append(unit, {**record, "weights": str(weights), "wall_seconds": time.perf_counter() - t0})
    return str(weights)


def train_unit(log: common.UnitLog, base: str, args, data: str) -> str:
    """Train the classic model from its YAML with the yolov5 package's train.py; returns its best.pt."""
    def train(run: Path):
        from yolov5 import train

        train.run(data=data, cfg=f"{args.model}.yaml", weights="", epochs=args.epochs, imgsz=DEFAULT_IMGSZ,
                  batch_size=16, workers=2, project=str(run.parent), name=run.name, exist_ok=True, device="cpu",
                  noplots=True)
        return run / "weights" / "best.pt", {"model": args.model, "epochs": args.epochs, "imgsz": DEFAULT_IMGSZ}

    return training_unit(log, f"{base}/train", train)


def continue_unit(log: common.UnitLog, base: str, args, data: str, weights: str) -> str:
    """Train the classic checkpoint C more epochs with yoloprune's classic fine-tune (lr0 0.01, the classic
    train.py's); the unit records its validation curve."""
    def train(run: Path):
        best = api.finetune(weights, data, args.continue_epochs, lr0=0.01, project=str(run.parent), name=run.name,
                            workers=2)
        return best, {"model": args.model, "from": weights, "epochs": args.continue_epochs,
                      "curve": common.val_curve(best)}

    return training_unit(log, f"{base}/continue", train)


def agreement(weights: str, data: str) -> dict:
    """yoloprune's pycocotools mAP and the classic val.py's on the same 500 test images."""
    from yolov5 import val

    ours = api.evaluate(weights, data, split="test", val_images=500)
    (_, _, map50, map50_95, *_), *_ = val.run(data=data, weights=weights, imgsz=DEFAULT_IMGSZ, batch_size=32,
                                                conf_thres=CONF, iou_thres=IOU, max_det=MAX_DET, task="test",
                                                device="cpu", plots=False, project=str(RUNS), name="val",
                                                exist_ok=True)
    return {"yoloprune_map50_95": ours.map50_95, "yoloprune_map50": ours.map50, "classic_val_map50_95": map50_95,
            "classic_val_map50": map50, "images": 500}


def print_table(rows: dict[str, dict], base: str, tail: str) -> None:
    """The agreement line (the unpruned model's mAP on the 500 test images), then uniform and hdbo (mean ± std
    over seeds) on the same images."""
    a = rows.get(f"{base}/agreement")
    if a:
        ours, theirs = a["yoloprune_map50_95"], a["classic_val_map50_95"]
        print(f"{base} unpruned: mAP50-95 yoloprune {ours:.4f}, classic val.py {theirs:.4f} "
              f"(difference {ours - theirs:+.4f})")
    for strategy in ("uniform", "hdbo"):
        r = [x for k, x in rows.items() if k.startswith(f"{base}/{strategy}/{tail}")]
        if r:
            v = [x["final_check_map50_95"] for x in r]
            f = [x["finetuned_final_check_map50_95"] for x in r]
            print(f"{strategy:<8} {np.mean(v):.4f} ± {np.std(v):.4f} (n={len(v)}) at "
                  f"{np.mean([x['flops_ratio'] for x in r]):.1%} FLOPs; after {r[0]['finetune_epochs']} fine-tune "
                  f"epoch(s) {np.mean(f):.4f} ± {np.std(f):.4f}")


if __name__ == "__main__":
    main()
