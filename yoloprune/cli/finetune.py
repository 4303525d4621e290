"""`yoloprune finetune`: Ultralytics training that keeps the pruned architecture."""

from __future__ import annotations

from yoloprune.cli.common import emit


def add_parser(sub) -> None:
    from yoloprune.devices import DEVICE_HELP
    from yoloprune.training.finetune import LR0_HELP

    p = sub.add_parser("finetune", help="fine-tune a pruned model with Ultralytics' trainer, keeping its architecture")
    p.add_argument("--weights", required=True, help="pruned .pt checkpoint")
    p.add_argument("--data", required=True, help="Ultralytics dataset YAML")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--imgsz", type=int, default=None, help="default: the checkpoint's training size")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr0", type=float, default=None, help=LR0_HELP)
    p.add_argument("--warmup-epochs", type=float, default=0.5)
    p.add_argument("--fraction", type=float, default=1.0, help="share of the train split to use")
    p.add_argument("--distill", default=None, metavar="TEACHER.pt",
                   help="distil from this checkpoint, the model it was pruned from (Ultralytics' DistillationModel)")
    p.add_argument("--distill-weight", type=float, default=None,
                   help="weight of the distillation feature loss (default: Ultralytics' dis, 6.0)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument("--project", default="runs/finetune")
    p.add_argument("--name", default="exp")
    p.add_argument("--resume", action="store_true", help="resume the run's last.pt (pass it as --weights)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def run(args) -> None:
    from yoloprune import api
    from yoloprune.training.finetune import finetune

    before = api.load(args.weights)
    best = finetune(args.weights, args.data, args.epochs, distill=args.distill, distill_weight=args.distill_weight,
                    imgsz=args.imgsz, batch=args.batch,
                    lr0=args.lr0, warmup_epochs=args.warmup_epochs, workers=args.workers, project=args.project,
                    name=args.name, fraction=args.fraction, resume=args.resume or None, verbose=not args.json,
                    device=args.device)
    after = api.load(best)
    shapes = lambda m: [tuple(p.shape) for p in m.parameters()]  # noqa: E731
    payload = {"weights": args.weights, "best": str(best), "params_before": api.param_count(before.model),
               "params_after": api.param_count(after.model), "shapes_kept": shapes(before.model) == shapes(after.model)}
    emit(args, payload, [f"fine-tuned checkpoint {best}",
                          f"params {payload['params_before']} -> {payload['params_after']} "
                          f"(layer shapes {'kept' if payload['shapes_kept'] else 'CHANGED'})"])
