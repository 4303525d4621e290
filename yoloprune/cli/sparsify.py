"""`yoloprune sparsify`: network slimming on a trained checkpoint, with its before/after report."""

from __future__ import annotations

from yoloprune.cli.common import FLOPS_HELP, emit, log_to_stderr


def add_parser(sub) -> None:
    from yoloprune.devices import DEVICE_HELP
    from yoloprune.evaluation.scores import CALIB_IMAGES
    from yoloprune.training.sparsify import DEFAULT_L1

    p = sub.add_parser("sparsify", help="network slimming: train with an L1 pull on the BatchNorm scales of the "
                                        "prunable channels, so that pruning them later costs little")
    p.add_argument("--weights", required=True, help="trained Ultralytics .pt checkpoint")
    p.add_argument("--data", required=True, help="Ultralytics dataset YAML with the model's classes")
    p.add_argument("--epochs", type=int, required=True, help="training epochs with the penalty")
    p.add_argument("--l1", type=float, default=DEFAULT_L1,
                   help=f"L1 strength: every optimizer step shrinks each prunable |BN scale| by learning rate x L1, "
                        f"stopping at zero (default {DEFAULT_L1}, chosen by benchmarks/sparsify_lambda.py)")
    p.add_argument("--fraction", type=float, default=1.0, help="share of the train split per epoch (default 1.0)")
    p.add_argument("--target-flops", type=float, default=0.5,
                   help=f"budget of the prunability readout (uniform rates, BN recalibrated): {FLOPS_HELP}")
    p.add_argument("--val-images", type=int, default=200, help="readout slice of val (default 200)")
    p.add_argument("--calib-images", type=int, default=CALIB_IMAGES,
                   help=f"BN calibration images of the readout (default {CALIB_IMAGES})")
    p.add_argument("--imgsz", type=int, default=None, help="default: the checkpoint's training size")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2, help="data loader processes")
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument("--project", default="runs/sparsify")
    p.add_argument("--name", default="exp")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def run(args) -> None:
    from yoloprune import api
    from yoloprune.errors import UserError
    from yoloprune.training.sparsify import WRECK_SHARE

    if not 0.0 < args.fraction <= 1.0:
        raise UserError(f"--fraction {args.fraction} must lie in (0, 1]: the share of the train split")
    s = api.sparsify(args.weights, args.data, args.epochs, args.l1, log=None if args.json else log_to_stderr,
                     target_flops=args.target_flops, val_images=args.val_images, calib_images=args.calib_images,
                     imgsz=args.imgsz, batch=args.batch, fraction=args.fraction, workers=args.workers,
                     project=args.project, name=args.name, verbose=not args.json, device=args.device)
    before, after = s["prunability"]["before"], s["prunability"]["after"]
    scales = s["bn_scales"]
    emit(args, s, [
        f"sparsified  {s['weights']}  ({s['epochs']} epoch(s), L1 {s['l1']}; plot: {s['run_dir']}/bn_scales.png)",
        f"BN scales   median {scales['before']['median']:.3f} -> {scales['after']['median']:.3f}; under "
        f"{s['small_threshold']}: {scales['before']['share_below_small']:.1%} -> "
        f"{scales['after']['share_below_small']:.1%} of {scales['after']['channels']} prunable channels",
        f"unpruned    mAP50-95 {before['unpruned_map50_95']:.4f} -> {after['unpruned_map50_95']:.4f} "
        f"(recalibrated, {s['search_images']} val images)",
        f"prunable    uniform rates at {after['target_flops']:.0%} FLOPs: mAP50-95 {before['uniform_map50_95']:.4f} -> "
        f"{after['uniform_map50_95']:.4f}",
        *([f"WARNING     sparsifying lost more than {1 - WRECK_SHARE:.0%} of the unpruned mAP: this --l1 wrecks "
           f"the model; lower it"] if s["wrecked"] else []),
    ])
