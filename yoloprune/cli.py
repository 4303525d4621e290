"""Command line: `yoloprune <command> ...`, a thin layer over yoloprune.api.

Bad input prints one line on stderr and exits with code 2; `--json` prints one JSON object
on stdout and nothing else there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_VERBOSE", "false")
warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=FutureWarning)

RATE_HELP = "prune rate = fraction of a group's channels REMOVED, in [0, 1)"


def _emit(args, payload: dict, lines: list[str]) -> None:
    if args.json:
        print(json.dumps(payload))
    else:
        print("\n".join(lines))


def cmd_layers(args) -> None:
    from yoloprune import api

    loaded = api.load(args.weights, args.imgsz)
    space = api.analyse(loaded, args.round_to)
    groups = api.group_table(space)
    flops = float(space.flops()[0])
    params = sum(p.numel() for p in loaded.model.parameters())
    payload = {"weights": args.weights, "imgsz": loaded.imgsz, "groups": groups, "fixed": space.fixed,
               "prunable_flops_share": round(api.prunable_flops_share(space), 6), "flops": flops, "params": params}
    lines = [f"{args.weights} at {loaded.imgsz} px: {flops / 1e9:.3f} GFLOPs, {params / 1e6:.3f} M params, "
             f"{len(groups)} prunable groups covering {payload['prunable_flops_share']:.1%} of conv FLOPs",
             f"{'group':<28}{'channels':>9}{'parts':>6}{'min keep':>9}{'FLOPs share':>12}  members"]
    for g in groups:
        members = g["members"][1:]
        lines.append(f"{g['name']:<28}{g['channels']:>9}{g['parts']:>6}{g['min_keep']:>9}{g['flops_share']:>12.1%}  "
                     + (f"+{len(members)}: {', '.join(members[:3])}{' ...' if len(members) > 3 else ''}"
                        if members else ""))
    lines.append(f"held fixed ({len(space.fixed)}):")
    lines += [f"  {f['module']:<28}{f['reason']}" for f in space.fixed]
    _emit(args, payload, lines)


def cmd_prune(args) -> None:
    from yoloprune import api

    loaded = api.load(args.weights, args.imgsz)
    space = api.analyse(loaded, args.round_to)
    rates = api.read_rates(args.rates) if args.rates else api.uniform_rates(space, args.ratio)
    result = api.prune(loaded, rates, args.criterion, args.round_to, space)
    out = api.save_pruned(result, loaded, args.out)
    payload = {"out": str(out), "flops_before": result.flops_before, "flops_after": result.flops_after,
               "flops_ratio": result.flops_after / result.flops_before,
               "params_before": result.params_before, "params_after": result.params_after}
    _emit(args, payload, [
        f"saved {out}",
        f"FLOPs  {result.flops_before / 1e9:.3f} G -> {result.flops_after / 1e9:.3f} G "
        f"({payload['flops_ratio']:.1%} kept) at {loaded.imgsz} px",
        f"params {result.params_before / 1e6:.3f} M -> {result.params_after / 1e6:.3f} M",
    ])


def cmd_eval(args) -> None:
    from yoloprune import api

    r = api.evaluate(args.weights, args.data, split=args.split, val_images=args.val_images, imgsz=args.imgsz,
                     batch=args.batch, slice_seed=args.slice_seed, recalibrate=args.recalibrate,
                     calib_images=args.calib_images, image_dir=args.images)
    payload = {"weights": args.weights, "data": args.data, "split": args.split, "map50_95": r.map50_95,
               "map50": r.map50, "images": r.images, "seconds": r.seconds}
    _emit(args, payload, [f"{args.weights} on {r.images} {args.split} images of {args.data}: "
                          f"mAP50-95 {r.map50_95:.4f}  mAP50 {r.map50:.4f}  ({r.seconds:.1f} s, pycocotools)"])


def _stages(value: str | None) -> int | str | None:
    """--stages: a whole number, 'auto', or absent (one-shot search)."""
    from yoloprune.errors import UserError

    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise UserError(f"--stages must be a whole number >= 1 or 'auto', got {value}") from None


def cmd_search(args) -> None:
    from yoloprune.search import SearchConfig, run_search

    cfg = SearchConfig(weights=args.weights, data=args.data, target_flops=args.target_flops,
                       max_latency_ms=args.max_latency_ms, min_speedup=args.min_speedup,
                       latency_threads=args.latency_threads,
                       latency_models=args.latency_models, trials=args.trials,
                       strategy=args.strategy, val_images=args.val_images, calib_images=args.calib_images,
                       imgsz=args.imgsz, seed=args.seed, criterion=args.criterion, round_to=args.round_to,
                       recalibrate=not args.no_recalibrate, project=args.project, name=args.name, resume=args.resume,
                       finetune_epochs=args.finetune_epochs, finetune_fraction=args.finetune_fraction,
                       distill_from=args.weights if args.distill else None, score=args.score,
                       stages=_stages(args.stages), recover_epochs=args.recover_epochs,
                       workers=args.workers, worker_cpus=args.worker_cpus, worker_gpus=args.worker_gpus,
                       ray_address=args.ray_address)
    bar = None

    def on_trial(trial: dict, best: dict, total: int) -> None:
        nonlocal bar
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=trial["trial"], desc="search", unit="trial", file=sys.stderr,
                       disable=args.json and not sys.stderr.isatty())
        bar.update(1)
        bar.set_postfix(best=f"{best['score']:.4f}", last=f"{trial['score']:.4f}")
        if bar.n >= bar.total:
            bar.close()
            bar = None

    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    if cfg.stages is not None:
        from yoloprune.staged import run_staged

        summary = run_staged(cfg, on_trial, log)
        _emit(args, summary, [
            f"run folder  {summary['run_dir']}  ({summary['stages']} stage(s), {summary['trials']} trials, "
            f"{summary['strategy']}, score {summary['score']})",
            *[f"stage {k}     FLOPs kept {s['best']['flops_ratio']:.1%} of its input, search-slice mAP50-95 "
              f"{s['best']['map50_95']:.4f}, after recovery "
              f"{s.get('finetuned_final_check_map50_95', float('nan')):.4f} "
              f"on the final-check images ({s['regime']})" for k, s in enumerate(summary["stage_summaries"], 1)],
            f"final       FLOPs kept {summary['flops_ratio']:.1%}, mAP50-95 {summary['final_check_map50_95']:.4f} on "
            f"{summary['final_check_images']} final-check images",
            f"pruned      {summary['pruned']}",
        ])
        return
    summary = run_search(cfg, on_trial, log=log)
    b = summary["best"]
    _emit(args, summary, [
        f"run folder  {summary['run_dir']}  ({summary['trials']} trials, {summary['strategy']})",
        f"best trial  {b['trial']}: FLOPs kept {b['flops_ratio']:.1%}, mAP50-95 {b['map50_95']:.4f} on the search "
        f"slice, {b['final_check_map50_95']:.4f} on {b['final_check_images']} final-check images",
        f"pruned      {summary['pruned']}",
        *([f"fine-tuned  {summary['finetuned']}: {summary['finetuned_final_check_map50_95']:.4f} on the final-check "
           f"images after {summary['finetune_epochs']} epoch(s)"] if "finetuned" in summary else []),
        *([f"latency     {summary['measured_latency_ms']:.2f} ms measured (ORT, {summary['latency_threads']} thread(s), "
           f"budget {summary['max_latency_ms']} ms)"] if summary["measured_latency_ms"] is not None else []),
        f"BO overhead {summary['bo_overhead_share']:.1%} of trial time; "
        f"{summary['mean_trial_eval_seconds']:.1f} s per trial evaluation",
    ])


def cmd_bench(args) -> None:
    from yoloprune import api
    from yoloprune.bench import ONNX_OPSET, benchmark
    from yoloprune.errors import UserError

    try:
        threads = tuple(int(t) for t in args.threads.split(","))
    except ValueError:
        raise UserError(f"--threads must be a comma-separated list of integers, got '{args.threads}'") from None
    imgsz = args.imgsz
    if imgsz is None:
        if args.weights[0].endswith(".onnx"):
            raise UserError("--imgsz is required when the first model is an .onnx file")
        imgsz = api.load(args.weights[0]).imgsz
    models = benchmark(args.weights, imgsz, threads, args.batch, args.runs, args.warmup)
    payload = {"imgsz": imgsz, "batch": args.batch, "runs": args.runs, "opset": ONNX_OPSET,
               "models": [{"weights": m.weights, "flops": m.flops, "params": m.params, "onnx_bytes": m.onnx_bytes,
                           "onnx_max_abs_diff": m.max_abs_diff, "threads": {str(t): v for t, v in m.latency.items()}}
                          for m in models]}
    lines = [f"ONNX Runtime CPU, {imgsz} px, batch {args.batch}, {args.runs} alternating runs, opset {ONNX_OPSET}",
             f"{'model':<40}{'GFLOPs':>8}{'params M':>9}{'MB':>6}" + "".join(
                 f"{f'{t}T p50':>10}{'p90':>8}{'p99':>8}{'x':>6}" for t in threads)]
    for m in models:
        lines.append(f"{Path(m.weights).name[:39]:<40}{m.flops / 1e9:>8.3f}{m.params / 1e6:>9.3f}"
                     f"{m.onnx_bytes / 1e6:>6.1f}" + "".join(
                         f"{m.latency[t]['p50_ms']:>10.2f}{m.latency[t]['p90_ms']:>8.2f}{m.latency[t]['p99_ms']:>8.2f}"
                         f"{m.latency[t]['speedup']:>6.2f}" for t in threads))
    _emit(args, payload, lines)


def cmd_finetune(args) -> None:
    from yoloprune import api
    from yoloprune.finetune import finetune

    before = api.load(args.weights)
    best = finetune(args.weights, args.data, args.epochs, distill=args.distill, imgsz=args.imgsz, batch=args.batch,
                    lr0=args.lr0, warmup_epochs=args.warmup_epochs, workers=args.workers, project=args.project,
                    name=args.name, fraction=args.fraction, resume=args.resume or None, verbose=not args.json)
    after = api.load(best)
    shapes = lambda m: [tuple(p.shape) for p in m.parameters()]  # noqa: E731
    payload = {"weights": args.weights, "best": str(best), "params_before": api.param_count(before.model),
               "params_after": api.param_count(after.model), "shapes_kept": shapes(before.model) == shapes(after.model)}
    _emit(args, payload, [f"fine-tuned checkpoint {best}",
                          f"params {payload['params_before']} -> {payload['params_after']} "
                          f"(layer shapes {'kept' if payload['shapes_kept'] else 'CHANGED'})"])


def cmd_demo(args) -> None:
    from yoloprune.demo import format_table, run_demo

    result = run_demo(args.out, quick=args.quick, log=lambda msg: print(msg, file=sys.stderr))
    _emit(args, result, format_table(result["table"]) + [f"report: {result['report']}"])


def build_parser() -> argparse.ArgumentParser:
    from yoloprune.importance import CRITERIA, DEFAULT_CRITERION
    from yoloprune.scores import CALIB_IMAGES, DEFAULT_SCORE, SCORES

    parser = argparse.ArgumentParser(prog="yoloprune", description="Structured pruning of Ultralytics YOLO detectors "
                                     "with per-group rates found by Bayesian optimisation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    def common(p, json_flag=True, weights_help="Ultralytics .pt checkpoint or model .yaml"):
        p.add_argument("--weights", required=True, help=weights_help)
        p.add_argument("--imgsz", type=int, default=None, help="image size (default: the checkpoint's training size)")
        if json_flag:
            p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    p = sub.add_parser("layers", help="list the prunable channel groups and what is held fixed")
    common(p)
    p.add_argument("--round-to", type=int, default=8, help="kept channel counts are multiples of this (default 8)")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("prune", help=f"prune structurally by one ratio or a rates file ({RATE_HELP})")
    common(p)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--ratio", type=float, help=f"one prune rate for every group; {RATE_HELP}")
    how.add_argument("--rates", help=f"YAML file {{group name: prune rate}}; {RATE_HELP}")
    p.add_argument("--criterion", default=DEFAULT_CRITERION, choices=CRITERIA,
                   help=f"which channels go (default {DEFAULT_CRITERION}: BatchNorm scale)")
    p.add_argument("--round-to", type=int, default=8, help="kept channel counts are multiples of this (default 8)")
    p.add_argument("--out", required=True, help="output checkpoint (.pt), loadable by ultralytics.YOLO")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("eval", help="mAP50-95 / mAP50 by pycocotools on a val slice")
    common(p, weights_help="Ultralytics .pt checkpoint, model .yaml, or a .onnx exported by Ultralytics")
    p.add_argument("--data", required=True, help="Ultralytics dataset YAML, or a COCO annotation JSON (+ --images)")
    p.add_argument("--images", help="image folder of a COCO JSON (default: ../images/<split> beside it)")
    p.add_argument("--split", default="val", help="split of a dataset YAML (default val)")
    p.add_argument("--val-images", type=int, default=None, help="first N images of the split (default: all)")
    p.add_argument("--slice-seed", type=int, default=None, help="take a seeded random slice instead of the first N")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", default="cpu", choices=["cpu"], help="inference device (CPU only in this version)")
    p.add_argument("--recalibrate", action="store_true", help="re-estimate BatchNorm statistics first")
    p.add_argument("--calib-images", type=int, default=CALIB_IMAGES,
                   help=f"calibration images for --recalibrate (default {CALIB_IMAGES})")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("search", help="Bayesian optimisation of per-group prune rates under a FLOPs and/or "
                                      "latency budget")
    common(p)
    p.add_argument("--data", required=True, help="Ultralytics dataset YAML (search slice from val, final check "
                   "from test if present, BN calibration from calib or train)")
    p.add_argument("--target-flops", type=float, default=None,
                   help="fraction of the unpruned FLOPs to KEEP, e.g. 0.5 (rates, by contrast, are fractions removed)")
    p.add_argument("--max-latency-ms", type=float, default=None,
                   help="ONNX Runtime latency budget (batch 1) the final model must MEASURE within; alone or with "
                        "--target-flops. The first search fits a latency model on this machine (minutes; cached)")
    p.add_argument("--min-speedup", type=float, default=None,
                   help="latency budget as a speedup over the unpruned model, both measured here run for run, e.g. "
                        "1.6 (robust to this machine running faster or slower today); alone or with the others")
    p.add_argument("--latency-threads", type=int, default=1, help="ORT intra-op threads for the latency budget")
    p.add_argument("--latency-models", type=int, default=60,
                   help="pruned models measured to fit the latency model (default 60, a third held out)")
    p.add_argument("--trials", type=int, default=60, help="evaluations, initial design included (default 60)")
    p.add_argument("--strategy", default="hdbo", help="hdbo (default), bocr, saas, random, uniform, global")
    p.add_argument("--val-images", type=int, default=200, help="search slice size (default 200)")
    p.add_argument("--calib-images", type=int, default=CALIB_IMAGES,
                   help=f"BN calibration images per candidate (default {CALIB_IMAGES})")
    p.add_argument("--no-recalibrate", action="store_true", help="score candidates with stale BN statistics")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--criterion", default=DEFAULT_CRITERION, choices=CRITERIA,
                   help=f"which channels go (default {DEFAULT_CRITERION}: BatchNorm scale)")
    p.add_argument("--round-to", type=int, default=8, help="kept channel counts are multiples of this (default 8)")
    p.add_argument("--project", default="runs/search", help="parent folder of run folders (default runs/search)")
    p.add_argument("--name", default=None, help="run folder name (default: next expN)")
    p.add_argument("--resume", action="store_true", help="continue the named run (default: the latest)")
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="fine-tune the best candidate this many epochs at the end (Ultralytics trainer; default 0)")
    p.add_argument("--finetune-fraction", type=float, default=1.0,
                   help="share of the train split each fine-tune or recovery epoch uses (default 1.0)")
    p.add_argument("--distill", action="store_true",
                   help="fine-tune and recover with knowledge distillation from the unpruned --weights (Ultralytics' "
                        "DistillationModel: a feature loss at the Detect inputs)")
    p.add_argument("--score", default=DEFAULT_SCORE, choices=SCORES,
                   help="what a candidate is worth: map (mAP after BN recalibration, default), recovered (mAP after "
                        "a short identical recovery, 6-15x the cost; for collapsed small models), agreement (class-map "
                        "similarity with the unpruned model)")
    p.add_argument("--stages", default=None,
                   help="reach --target-flops in K steps, each searched, pruned and recovered (--recover-epochs); "
                        "'auto' picks K from uniform probes. For small converged models that one-shot pruning "
                        "collapses; --trials is split over the stages")
    p.add_argument("--recover-epochs", type=int, default=1,
                   help="fine-tune epochs after every stage of --stages (default 1)")
    p.add_argument("--workers", type=int, default=1,
                   help="evaluate this many trials side by side on Ray actors (pip install 'yoloprune[ray]'); each "
                        "new candidate is proposed given those in flight, so a parallel run is NOT reproducible from "
                        "--seed (default 1: this process, no Ray)")
    p.add_argument("--worker-cpus", type=int, default=None,
                   help="torch threads (and Ray CPUs) per worker (default: visible cores / workers)")
    p.add_argument("--worker-gpus", type=float, default=0.0, help="GPUs per Ray worker (default 0)")
    p.add_argument("--ray-address", default=None,
                   help="HOST:PORT of a running Ray cluster to join (default: a private local instance for the run); "
                        "its nodes must see --weights and --data at the same paths")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("bench", help="ONNX export and ONNX Runtime CPU latency, FLOPs, params side by side")
    p.add_argument("--weights", required=True, nargs="+", help=".pt, .yaml or .onnx models; speedups are over the first")
    p.add_argument("--imgsz", type=int, default=None, help="image size (default: the first checkpoint's training size)")
    p.add_argument("--threads", default="1,2", help="comma-separated ORT intra-op thread counts (default 1,2)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=50, help="timed runs per model and thread count (default 50)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("finetune", help="fine-tune a pruned model with Ultralytics' trainer, keeping its architecture")
    p.add_argument("--weights", required=True, help="pruned .pt checkpoint")
    p.add_argument("--data", required=True, help="Ultralytics dataset YAML")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--imgsz", type=int, default=None, help="default: the checkpoint's training size")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr0", type=float, default=0.002, help="initial SGD learning rate (default 0.002)")
    p.add_argument("--warmup-epochs", type=float, default=0.5)
    p.add_argument("--fraction", type=float, default=1.0, help="share of the train split to use")
    p.add_argument("--distill", default=None, metavar="TEACHER.pt",
                   help="distil from this checkpoint, the model it was pruned from (Ultralytics' DistillationModel)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--project", default="runs/finetune")
    p.add_argument("--name", default="exp")
    p.add_argument("--resume", action="store_true", help="resume the run's last.pt (pass it as --weights)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("demo", help="the whole pipeline on the embedded default (bundled data and weights)")
    p.add_argument("--quick", action="store_true", help="a tiny run for CI (seconds, not minutes)")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `yoloprune` console script."""
    from yoloprune.errors import UserError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"yoloprune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `yoloprune layers ... | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"yoloprune {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
