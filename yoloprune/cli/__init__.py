"""Command line: `yoloprune <command> ...`, a thin layer over yoloprune.api (one module per command).

Bad input prints one line on stderr and exits with code 2; `--json` prints one JSON object
on stdout and nothing else there.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_VERBOSE", "false")
warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=FutureWarning)

COMMANDS = ("layers", "prune", "evaluate", "search", "pick", "sparsify", "bench", "finetune", "demo")


class OneLineParser(argparse.ArgumentParser):
    """argparse with bad-input errors on one line (exit 2), as every other error of the CLI."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = OneLineParser(prog="yoloprune", description="Structured pruning of Ultralytics YOLO detectors with "
                           "per-group rates found by Bayesian optimisation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command", parser_class=OneLineParser)
    for name in COMMANDS:
        importlib.import_module(f"yoloprune.cli.{name}").add_parser(sub)
    for name, p in sub.choices.items():
        if name != "demo":
            p.add_argument("--yolov5-repo", metavar="DIR", help="a clone of ultralytics/yolov5, for its classic "
                           "checkpoints (or install the yolov5 package; see the README)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `yoloprune` console script."""
    from yoloprune.errors import UserError
    from yoloprune.versions import check_ultralytics

    args = build_parser().parse_args(argv)
    try:
        check_ultralytics()
        if getattr(args, "yolov5_repo", None):
            from yoloprune.classic import use_repo

            use_repo(args.yolov5_repo)
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
