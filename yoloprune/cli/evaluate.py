"""`yoloprune eval`: mAP50-95 / mAP50 by pycocotools on a slice of a split."""

from __future__ import annotations

from yoloprune.cli.common import add_common, emit


def add_parser(sub) -> None:
    from yoloprune.devices import DEVICE_HELP
    from yoloprune.evaluation.scores import CALIB_IMAGES

    p = sub.add_parser("eval", help="mAP50-95 / mAP50 by pycocotools on a val slice")
    add_common(p, weights_help="Ultralytics .pt checkpoint, model .yaml, or a .onnx exported by Ultralytics")
    p.add_argument("--data", required=True, help="Ultralytics dataset YAML, or a COCO annotation JSON (+ --images)")
    p.add_argument("--images", help="image folder of a COCO JSON (default: ../images/<split> beside it)")
    p.add_argument("--split", default="val", help="split of a dataset YAML (default val)")
    p.add_argument("--val-images", type=int, default=None, help="first N images of the split (default: all)")
    p.add_argument("--slice-seed", type=int, default=None, help="take a seeded random slice instead of the first N")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", default=None, help=f"{DEVICE_HELP}; an .onnx model runs on ONNX Runtime's CPU")
    p.add_argument("--recalibrate", action="store_true", help="re-estimate BatchNorm statistics first")
    p.add_argument("--calib-images", type=int, default=CALIB_IMAGES,
                   help=f"calibration images for --recalibrate (default {CALIB_IMAGES})")
    p.set_defaults(func=run)


def run(args) -> None:
    from yoloprune import api

    r = api.evaluate(args.weights, args.data, split=args.split, val_images=args.val_images, imgsz=args.imgsz,
                     batch=args.batch, slice_seed=args.slice_seed, recalibrate=args.recalibrate,
                     calib_images=args.calib_images, image_dir=args.images, device=args.device)
    payload = {"weights": args.weights, "data": args.data, "split": args.split, "map50_95": r.map50_95,
               "map50": r.map50, "images": r.images, "seconds": r.seconds}
    emit(args, payload, [f"{args.weights} on {r.images} {args.split} images of {args.data}: "
                          f"mAP50-95 {r.map50_95:.4f}  mAP50 {r.map50:.4f}  ({r.seconds:.1f} s, pycocotools)"])
