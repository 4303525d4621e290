"""`yoloprune bench`: ONNX export and ONNX Runtime CPU latency, FLOPs and params side by side."""

from __future__ import annotations

from pathlib import Path

from yoloprune.cli.common import emit


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="ONNX export and ONNX Runtime CPU latency, FLOPs, params side by side")
    p.add_argument("--weights", required=True, nargs="+",
                   help=".pt, .yaml or .onnx models; speedups are over the first")
    p.add_argument("--imgsz", type=int, default=None, help="image size (default: the first checkpoint's training size)")
    p.add_argument("--threads", default="1,2", help="comma-separated ORT intra-op thread counts (default 1,2)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=50, help="timed runs per model and thread count (default 50)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def run(args) -> None:
    from yoloprune import api
    from yoloprune.errors import UserError
    from yoloprune.latency.bench import ONNX_OPSET

    try:
        threads = tuple(int(t) for t in args.threads.split(","))
    except ValueError:
        raise UserError(f"--threads must be a comma-separated list of integers, got '{args.threads}'") from None
    models = api.bench(args.weights, args.imgsz, threads, args.batch, args.runs, args.warmup)
    imgsz = models[0].imgsz
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
    emit(args, payload, lines)
