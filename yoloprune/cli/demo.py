"""`yoloprune demo`: the whole pipeline on the embedded default, offline."""

from __future__ import annotations

from yoloprune.cli.common import emit, log_to_stderr


def add_parser(sub) -> None:
    from yoloprune.devices import DEVICE_HELP

    p = sub.add_parser("demo", help="the whole pipeline on the embedded default (bundled data and weights)")
    p.add_argument("--quick", action="store_true", help="a tiny run for CI (seconds, not minutes)")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def run(args) -> None:
    from yoloprune.default.demo import format_table, run_demo

    result = run_demo(args.out, quick=args.quick, log=log_to_stderr, device=args.device)
    emit(args, result, format_table(result["table"]) + [f"report: {result['report']}"])
