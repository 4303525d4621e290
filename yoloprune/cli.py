"""Command line: `yoloprune <command> ...`, a thin layer over yoloprune.api.

Bad input prints one line on stderr and exits with code 2; `--json` prints one JSON object
on stdout and nothing else there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_VERBOSE", "false")

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
    out = api.save_pruned(result, loaded, args.out, args.criterion)
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


def cmd_not_ready(args) -> None:
    from yoloprune.errors import UserError

    raise UserError(f"'yoloprune {args.command}' is not implemented yet in this version (see the README's status table)")


def build_parser() -> argparse.ArgumentParser:
    from yoloprune.importance import CRITERIA

    parser = argparse.ArgumentParser(prog="yoloprune", description="Structured pruning of Ultralytics YOLO detectors "
                                     "with per-group rates found by Bayesian optimisation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    def common(p, json_flag=True):
        p.add_argument("--weights", required=True, help="Ultralytics .pt checkpoint or model .yaml")
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
    p.add_argument("--criterion", default="l1", choices=CRITERIA, help="which channels go (default l1)")
    p.add_argument("--round-to", type=int, default=8, help="kept channel counts are multiples of this (default 8)")
    p.add_argument("--out", required=True, help="output checkpoint (.pt), loadable by ultralytics.YOLO")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("eval", help="mAP50-95 / mAP50 by pycocotools on a val slice")
    common(p)
    p.add_argument("--data", required=True, help="Ultralytics dataset YAML, or a COCO annotation JSON (+ --images)")
    p.add_argument("--images", help="image folder of a COCO JSON (default: ../images/<split> beside it)")
    p.add_argument("--split", default="val", help="split of a dataset YAML (default val)")
    p.add_argument("--val-images", type=int, default=None, help="first N images of the split (default: all)")
    p.add_argument("--slice-seed", type=int, default=None, help="take a seeded random slice instead of the first N")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", default="cpu", choices=["cpu"], help="inference device (CPU only in this version)")
    p.add_argument("--recalibrate", action="store_true", help="re-estimate BatchNorm statistics first")
    p.add_argument("--calib-images", type=int, default=200, help="calibration images for --recalibrate")
    p.set_defaults(func=cmd_eval)

    for name, text in (("search", "Bayesian optimisation of per-group rates under a FLOPs budget"),
                       ("bench", "ONNX Runtime latency, FLOPs and params side by side"),
                       ("finetune", "fine-tune a pruned model, keeping its architecture"),
                       ("demo", "the whole pipeline on the embedded default")):
        p = sub.add_parser(name, help=text + " (not implemented yet)")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=cmd_not_ready)
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
    except KeyboardInterrupt:
        print(f"yoloprune {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
