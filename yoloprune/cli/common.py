"""What every command shares: the common flags, and how a result is printed (text, or one JSON object)."""

from __future__ import annotations

import json

RATE_HELP = "prune rate = fraction of a group's channels REMOVED, in [0, 1)"
FLOPS_HELP = "fraction of the unpruned FLOPs to KEEP, e.g. 0.5 (rates, by contrast, are fractions removed)"


def emit(args, payload: dict, lines: list[str]) -> None:
    """`--json`: the payload as one JSON object on stdout; else the text lines."""
    if args.json:
        print(json.dumps(payload))
    else:
        print("\n".join(lines))


def add_common(p, json_flag: bool = True, weights_help: str = "Ultralytics .pt checkpoint or model .yaml") -> None:
    """--weights, --imgsz and (unless told otherwise) --json."""
    p.add_argument("--weights", required=True, help=weights_help)
    p.add_argument("--imgsz", type=int, default=None, help="image size (default: the checkpoint's training size)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def log_to_stderr(msg: str) -> None:
    """Progress and warnings go to stderr, so `--json` keeps stdout clean."""
    import sys

    print(msg, file=sys.stderr)
