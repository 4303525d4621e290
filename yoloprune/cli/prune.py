"""`yoloprune prune`: structural pruning by one ratio or a rates file."""

from __future__ import annotations

from yoloprune.cli.common import RATE_HELP, add_common, emit


def add_parser(sub) -> None:
    from yoloprune.structure.importance import CRITERIA, DEFAULT_CRITERION

    p = sub.add_parser("prune", help=f"prune structurally by one ratio or a rates file ({RATE_HELP})")
    add_common(p)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--ratio", type=float, help=f"one prune rate for every group; {RATE_HELP}")
    how.add_argument("--rates", help=f"YAML file {{group name: prune rate}}; {RATE_HELP}")
    p.add_argument("--criterion", default=DEFAULT_CRITERION, choices=CRITERIA,
                   help=f"which channels go (default {DEFAULT_CRITERION}: BatchNorm scale)")
    p.add_argument("--round-to", type=int, default=8, help="kept channel counts are multiples of this (default 8)")
    p.add_argument("--out", required=True, help="output checkpoint (.pt), loadable by ultralytics.YOLO")
    p.set_defaults(func=run)


def run(args) -> None:
    from yoloprune import api

    loaded = api.load(args.weights, args.imgsz)
    space = api.analyse(loaded, args.round_to)
    rates = api.read_rates(args.rates) if args.rates else api.uniform_rates(space, args.ratio)
    result = api.prune(loaded, rates, args.criterion, args.round_to, space)
    out = api.save_pruned(result, loaded, args.out)
    payload = {"out": str(out), "flops_before": result.flops_before, "flops_after": result.flops_after,
               "flops_ratio": result.flops_after / result.flops_before,
               "params_before": result.params_before, "params_after": result.params_after,
               "criterion": result.criterion}
    emit(args, payload, [
        *([f"criterion '{args.criterion}': {args.weights} has no BatchNorm; channels ranked by '{result.criterion}'"]
          if result.criterion != args.criterion else []),
        f"saved {out}",
        f"FLOPs  {result.flops_before / 1e9:.3f} G -> {result.flops_after / 1e9:.3f} G "
        f"({payload['flops_ratio']:.1%} kept) at {loaded.imgsz} px",
        f"params {result.params_before / 1e6:.3f} M -> {result.params_after / 1e6:.3f} M",
    ])
