"""`yoloprune layers`: the prunable channel groups and what is held fixed."""

from __future__ import annotations

from yoloprune.cli.common import add_common, emit


def add_parser(sub) -> None:
    from yoloprune.search.criteria import CRITERION_CHOICES

    p = sub.add_parser("layers", help="list the prunable channel groups and what is held fixed")
    add_common(p)
    p.add_argument("--round-to", type=int, default=8, help="kept channel counts are multiples of this (default 8)")
    p.add_argument("--criterion", default=None, choices=CRITERION_CHOICES,
                   help="also show the criterion that ranks each group's channels; auto (needs --data) probes them "
                        "as 'search --criterion auto' does")
    p.add_argument("--data", default=None, help="dataset YAML, for --criterion auto")
    p.add_argument("--val-images", type=int, default=200, help="as the search's: its slice gives the probe images")
    p.add_argument("--slice-seed", type=int, default=0, help="as the search's (default 0)")
    p.set_defaults(func=run)


def run(args) -> None:
    from yoloprune import api
    from yoloprune.errors import UserError

    if args.criterion == "auto" and not args.data:
        raise UserError("--criterion auto probes the model on images: give --data")
    loaded = api.load(args.weights, args.imgsz)
    space = api.analyse(loaded, args.round_to)
    groups = api.group_table(space)
    if args.criterion:
        chosen = (api.choose_criteria(loaded, space, args.data, args.val_images, args.slice_seed)
                  if args.criterion == "auto" else {})
        for g in groups:
            g["criterion"] = chosen.get(g["name"], args.criterion)
    flops = float(space.flops()[0])
    params = sum(p.numel() for p in loaded.model.parameters())
    payload = {"weights": args.weights, "imgsz": loaded.imgsz, "groups": groups, "fixed": space.fixed,
               "prunable_flops_share": round(api.prunable_flops_share(space), 6), "flops": flops, "params": params}
    lines = [f"{args.weights} at {loaded.imgsz} px: {flops / 1e9:.3f} GFLOPs, {params / 1e6:.3f} M params, "
             f"{len(groups)} prunable groups covering {payload['prunable_flops_share']:.1%} of conv FLOPs",
             f"{'group':<28}{'channels':>9}{'parts':>6}{'min keep':>9}{'FLOPs share':>12}"
             + (f"{'criterion':>10}" if args.criterion else "") + "  members"]
    for g in groups:
        members = g["members"][1:]
        lines.append(f"{g['name']:<28}{g['channels']:>9}{g['parts']:>6}{g['min_keep']:>9}{g['flops_share']:>12.1%}"
                     + (f"{g['criterion']:>10}" if args.criterion else "") + "  "
                     + (f"+{len(members)}: {', '.join(members[:3])}{' ...' if len(members) > 3 else ''}"
                        if members else ""))
    lines.append(f"held fixed ({len(space.fixed)}):")
    lines += [f"  {f['module']:<28}{f['reason']}" for f in space.fixed]
    emit(args, payload, lines)
