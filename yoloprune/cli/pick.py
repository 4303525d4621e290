"""`yoloprune pick`: a model from a front search (`search --pareto`), at the limit the user chooses after seeing it."""

from __future__ import annotations

from yoloprune.cli.common import FLOPS_HELP, emit, log_to_stderr


def add_parser(sub) -> None:
    from yoloprune.devices import DEVICE_HELP

    p = sub.add_parser("pick", help="prune the best point of a `search --pareto` front within a FLOPs or latency "
                                    "limit, re-check it and save it as a stock checkpoint")
    p.add_argument("--run", required=True, help="run folder of a finished `search --pareto flops|latency`")
    limit = p.add_mutually_exclusive_group(required=True)
    limit.add_argument("--target-flops", type=float, help=FLOPS_HELP)
    limit.add_argument("--max-latency-ms", type=float,
                       help="ONNX Runtime latency (batch 1) the model must MEASURE within on this machine")
    limit.add_argument("--min-speedup", type=float, help="measured speedup over the unpruned model, e.g. 1.6")
    p.add_argument("--latency-threads", type=int, default=None,
                   help="ORT intra-op threads for a latency limit (default: the search's)")
    p.add_argument("--out", required=True, help="output checkpoint (.pt), loadable by ultralytics.YOLO")
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="fine-tune the picked model this many epochs (Ultralytics trainer; default 0)")
    p.add_argument("--device", default=None, help=f"{DEVICE_HELP}: BN recalibration, the final check, the fine-tune")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def run(args) -> None:
    from yoloprune import api

    r = api.pick(args.run, args.out, target_flops=args.target_flops, max_latency_ms=args.max_latency_ms,
                 min_speedup=args.min_speedup, finetune_epochs=args.finetune_epochs,
                 latency_threads=args.latency_threads, device=args.device, log=log_to_stderr)
    emit(args, r, [
        ("picked      " + (f"trial {r['trial']}" if r["trial"] is not None else "the scan's allocation at the limit")
         + f" of {r['run_dir']}: FLOPs kept {r['flops_ratio']:.1%}")
        + (f", {r['measured_latency_ms']:.2f} ms measured ({r['latency_threads']} thread(s), unpruned "
           f"{r['unpruned_latency_ms']:.2f} ms)" if r["measured_latency_ms"] is not None else ""),
        f"mAP50-95    {r['search_map50_95']:.4f} on the search slice, {r['final_check_map50_95']:.4f} on "
        f"{r['final_check_images']} final-check images (BN recalibrated, not fine-tuned)",
        f"saved       {r['out']}",
        *([f"fine-tuned  {r['finetuned']}: {r['finetuned_final_check_map50_95']:.4f} on the final-check images after "
           f"{r['finetune_epochs']} epoch(s)"] if "finetuned" in r else []),
    ])
