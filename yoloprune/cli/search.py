"""`yoloprune search`: per-group rates by Bayesian optimisation, one-shot, in stages, or as the recovery recipe."""

from __future__ import annotations

import sys

from yoloprune.cli.common import FLOPS_HELP, add_common, emit, log_to_stderr


def add_parser(sub) -> None:
    from yoloprune.devices import DEVICE_HELP
    from yoloprune.evaluation.scores import CALIB_IMAGES, DEFAULT_SCORE, SCORES
    from yoloprune.search.budget import FRONTS
    from yoloprune.search.criteria import CRITERION_CHOICES
    from yoloprune.structure.importance import DEFAULT_CRITERION
    from yoloprune.training.finetune import LR0_HELP
    from yoloprune.training.sparsify import DEFAULT_L1

    p = sub.add_parser("search", help="per-group prune rates (Bayesian optimisation or a sensitivity scan) under a "
                                      "FLOPs and/or latency budget",
                       epilog="Recommended path to a model to ship: --target-flops F --finetune-epochs 10 (one-shot "
                              "search, by the default auto strategy a sensitivity scan, then 10 fine-tune epochs at "
                              "lr0 0.01, the default for that length; measured with 40 trials on a small converged "
                              "model at 50% FLOPs: 0.5 mAP50-95 points under the unpruned model given the same 10 "
                              "epochs, hdbo 0.9 over 3 seeds; benchmarks/README.md). --sparsify-epochs and --distill "
                              "are built but have not beaten it yet.")
    add_common(p)
    p.add_argument("--data", required=True, help="Ultralytics dataset YAML (search slice from val, final check "
                   "from test if present, BN calibration from calib or train)")
    p.add_argument("--target-flops", type=float, default=None, help=FLOPS_HELP)
    p.add_argument("--max-latency-ms", type=float, default=None,
                   help="ONNX Runtime latency budget (batch 1) the final model must MEASURE within; alone or with "
                        "--target-flops. The first search fits a latency model on this machine (minutes; cached)")
    p.add_argument("--min-speedup", type=float, default=None,
                   help="latency budget as a speedup over the unpruned model, both measured here run for run, e.g. "
                        "1.6 (robust to this machine running faster or slower today); alone or with the others")
    p.add_argument("--latency-threads", type=int, default=1, help="ORT intra-op threads for the latency budget")
    p.add_argument("--latency-models", type=int, default=60,
                   help="pruned models measured to fit the latency model (default 60, a third held out)")
    p.add_argument("--trials", type=int, default=60, help="evaluations, initial design included (default 60)")
    p.add_argument("--strategy", default="auto",
                   help="auto (default: sensitivity for a FLOPs budget when --trials affords a scan of 12 blocks "
                        "of groups, 38 trials on 12 groups or more, else hdbo; for --pareto the same besides the "
                        "front's allocations, 53 trials on 12 groups or more, else hdbo's EHVI front), hdbo, "
                        "hdbo-warm (hdbo started from a coarse sensitivity scan), bocr, saas, random, uniform, global, "
                        "sensitivity (the peers' per-group scan: scores each group alone at 3 rates, then "
                        "allocates; scan trials lie off the budget; --trials caps the scan, a scan of every group "
                        "alone takes 3 x groups + 2; for --pareto, the scan front: scan, uniform points, "
                        "allocations along the range)")
    p.add_argument("--val-images", type=int, default=200, help="search slice size (default 200)")
    p.add_argument("--slice-seed", type=int, default=0,
                   help="seed of the search slice, a random draw from val recorded in the run (default 0)")
    p.add_argument("--calib-images", type=int, default=CALIB_IMAGES,
                   help=f"BN calibration images per candidate (default {CALIB_IMAGES})")
    p.add_argument("--no-recalibrate", action="store_true", help="score candidates with stale BN statistics")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--criterion", default=DEFAULT_CRITERION, choices=CRITERION_CHOICES,
                   help=f"which channels go (default {DEFAULT_CRITERION}: BatchNorm scale); auto: per group, the "
                        f"criterion whose choice changes the model's outputs least (criteria.json in the run)")
    p.add_argument("--round-to", type=int, default=8, help="kept channel counts are multiples of this (default 8)")
    p.add_argument("--project", default="runs/search", help="parent folder of run folders (default runs/search)")
    p.add_argument("--name", default=None, help="run folder name (default: next expN)")
    p.add_argument("--resume", action="store_true", help="continue the named run (default: the latest)")
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="fine-tune the best candidate this many epochs at the end (Ultralytics trainer; default 0)")
    p.add_argument("--finetune-fraction", type=float, default=1.0,
                   help="share of the train split each fine-tune or recovery epoch uses (default 1.0)")
    p.add_argument("--finetune-lr0", type=float, default=None,
                   help=f"the fine-tune's and recoveries' {LR0_HELP}")
    p.add_argument("--distill", action="store_true",
                   help="fine-tune and recover with knowledge distillation from the unpruned --weights (Ultralytics' "
                        "DistillationModel: a feature loss at the Detect inputs)")
    p.add_argument("--distill-weight", type=float, default=None,
                   help="weight of --distill's feature loss (default: Ultralytics' dis, 6.0)")
    p.add_argument("--score", default=DEFAULT_SCORE, choices=SCORES,
                   help="what a candidate is worth: map (mAP after BN recalibration, default), recovered (mAP after "
                        "a short identical recovery, 6-15x the cost; for collapsed small models), agreement (class-map "
                        "similarity with the unpruned model)")
    p.add_argument("--stages", default=None,
                   help="reach --target-flops in K steps, each searched, pruned and recovered (--recover-epochs); "
                        "'auto' picks K from uniform probes. For small converged models that one-shot pruning "
                        "collapses; --trials is split over the stages")
    p.add_argument("--recover-epochs", type=int, default=1,
                   help="fine-tune epochs after every stage of --stages (default 1)")
    p.add_argument("--sparsify-epochs", type=int, default=None,
                   help="the recovery recipe: network slimming for this many epochs first (L1 on the prunable BN "
                        "scales, see `yoloprune sparsify`), then search, prune and fine-tune --finetune-epochs (with "
                        "--distill, from the original model); drops are reported against the original")
    p.add_argument("--l1", type=float, default=DEFAULT_L1,
                   help=f"L1 pull on BN scales during --sparsify-epochs (default {DEFAULT_L1})")
    p.add_argument("--workers", type=int, default=1,
                   help="evaluate this many trials side by side on Ray actors (pip install 'yoloprune[ray]'); each "
                        "new candidate is proposed given those in flight, so a parallel run is NOT reproducible from "
                        "--seed (default 1: this process, no Ray)")
    p.add_argument("--worker-cpus", type=int, default=None,
                   help="torch threads (and Ray CPUs) per worker (default: visible cores / workers)")
    p.add_argument("--worker-gpus", type=float, default=0.0, help="GPUs per Ray worker (default 0)")
    p.add_argument("--device", default=None,
                   help=f"{DEVICE_HELP}: trials (pruning copies, BN recalibration, inference, NMS), recoveries, the "
                        f"fine-tune and the final check; latency timing stays on ONNX Runtime's CPU. Ray workers "
                        f"take the device --worker-gpus gives them")
    p.add_argument("--pareto", default=None, choices=FRONTS,
                   help="search the whole front of mAP against FLOPs kept or estimated ONNX Runtime latency in one run "
                        "(front.json, front.png, report.html), then take models from it with `yoloprune pick`; "
                        "--target-flops / --max-latency-ms / --min-speedup then bound the front's range. By "
                        "--strategy sensitivity (auto's choice from 53 trials) one scan serves every budget; measured "
                        "ahead of one hdbo search per budget at 35/50/65%% FLOPs and 1.3/1.6/2.0x speedup")
    p.add_argument("--ray-address", default=None,
                   help="HOST:PORT of a running Ray cluster to join (default: a private local instance for the run); "
                        "its nodes must see --weights and --data at the same paths")
    p.set_defaults(func=run)


def _stages(value: str | None) -> int | str | None:
    """--stages: a whole number, 'auto', or absent (one-shot search)."""
    from yoloprune.errors import UserError

    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise UserError(f"--stages must be a whole number >= 1 or 'auto', got {value}") from None


class TrialBar:
    """A tqdm bar on stderr per search (stage), advanced by the search's on_trial callback."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.bar = quiet, None

    def __call__(self, trial: dict, best: dict, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=trial["trial"], desc="search", unit="trial", file=sys.stderr,
                            disable=self.quiet)
        self.bar.update(1)
        self.bar.set_postfix(best="scanning" if best is None else f"{best['score']:.4f}", last=f"{trial['score']:.4f}")
        if self.bar.n >= self.bar.total:
            self.bar.close()
            self.bar = None


def run(args) -> None:
    from yoloprune.errors import UserError
    from yoloprune.search.config import SearchConfig

    if args.sparsify_epochs is not None and args.sparsify_epochs < 1:
        raise UserError(f"--sparsify-epochs must be >= 1 (or left out), got {args.sparsify_epochs}")
    cfg = SearchConfig(weights=args.weights, data=args.data, target_flops=args.target_flops,
                       max_latency_ms=args.max_latency_ms, min_speedup=args.min_speedup,
                       latency_threads=args.latency_threads, latency_models=args.latency_models, trials=args.trials,
                       strategy=args.strategy, val_images=args.val_images, slice_seed=args.slice_seed,
                       calib_images=args.calib_images, imgsz=args.imgsz, seed=args.seed, criterion=args.criterion,
                       round_to=args.round_to, recalibrate=not args.no_recalibrate, project=args.project,
                       name=args.name, resume=args.resume, finetune_epochs=args.finetune_epochs,
                       finetune_fraction=args.finetune_fraction, finetune_lr0=args.finetune_lr0,
                       distill_from=args.weights if args.distill else None, distill_weight=args.distill_weight,
                       score=args.score, stages=_stages(args.stages), recover_epochs=args.recover_epochs,
                       sparsify_epochs=args.sparsify_epochs or 0, l1=args.l1, workers=args.workers,
                       worker_cpus=args.worker_cpus, worker_gpus=args.worker_gpus, ray_address=args.ray_address,
                       device=args.device, pareto=args.pareto)
    bar = TrialBar(quiet=args.json and not sys.stderr.isatty())
    if cfg.stages is not None:
        from yoloprune.search.staged import run_staged

        summary = run_staged(cfg, bar, log_to_stderr)
        emit(args, summary, staged_lines(summary))
        return
    if args.sparsify_epochs is not None:
        from yoloprune.search.recipe import run_recipe

        summary = run_recipe(cfg, bar, log_to_stderr)
    else:
        from yoloprune.search.loop import run_search

        summary = run_search(cfg, bar, log_to_stderr)
    emit(args, summary, front_lines(summary) if cfg.pareto else search_lines(summary))


def staged_lines(summary: dict) -> list[str]:
    return [
        f"run folder  {summary['run_dir']}  ({summary['stages']} stage(s), {summary['trials']} trials, "
        f"{summary['strategy']}, score {summary['score']})",
        *[f"stage {k}     FLOPs kept {s['best']['flops_ratio']:.1%} of its input, search-slice mAP50-95 "
          f"{s['best']['map50_95']:.4f}, after recovery "
          f"{s.get('finetuned_final_check_map50_95', float('nan')):.4f} "
          f"on the final-check images ({s['regime']})" for k, s in enumerate(summary["stage_summaries"], 1)],
        f"final       FLOPs kept {summary['flops_ratio']:.1%}, mAP50-95 {summary['final_check_map50_95']:.4f} on "
        f"{summary['final_check_images']} final-check images",
        f"pruned      {summary['pruned']}",
    ]


def front_lines(summary: dict) -> list[str]:
    import json
    from pathlib import Path

    from yoloprune.search.report import pick_limit

    front = json.loads((Path(summary["run_dir"]) / "front.json").read_text())
    unit = "FLOPs kept" if front["front"] == "flops" else "est. ms"
    return [f"run folder  {summary['run_dir']}  ({summary['trials']} trials, front of mAP50-95 against "
            f"{front['cost_unit']}: {summary['front_points']} points, hypervolume {summary['hypervolume']:.4f})",
            *[f"trial {p['trial']:>4}  {unit} {p['cost']:.3f}  mAP50-95 {p['map50_95']:.4f} (search slice)"
              for p in front["points"]],
            f"report      {Path(summary['run_dir']) / 'report.html'}; take a model with: yoloprune pick --run "
            f"{summary['run_dir']} {pick_limit(front['front'])} --out model.pt"]


def search_lines(summary: dict) -> list[str]:
    b, recipe = summary["best"], summary.get("recipe")
    lines = [f"run folder  {summary['run_dir']}  ({summary['trials']} trials, {summary['strategy']})"]
    if recipe:
        after = recipe["prunability"]["after"]
        lines.append(f"sparsified  {recipe['sparsified']}: {recipe['sparsify_epochs']} epoch(s), L1 {recipe['l1']}; "
                     f"uniform rates at {after['target_flops']:.0%} FLOPs keep {after['uniform_map50_95']:.4f}"
                     + ("  WARNING: sparsifying lost much of the unpruned mAP (lower --l1)"
                        if recipe["sparsify_wrecked"] else ""))
    lines += [
        f"best trial  {b['trial']}: FLOPs kept {b['flops_ratio']:.1%}, mAP50-95 {b['map50_95']:.4f} on the search "
        f"slice, {b['final_check_map50_95']:.4f} on {b['final_check_images']} final-check images",
        f"pruned      {summary['pruned']}",
        *([f"fine-tuned  {summary['finetuned']}: {summary['finetuned_final_check_map50_95']:.4f} on the final-check "
           f"images after {summary['finetune_epochs']} epoch(s)"] if "finetuned" in summary else []),
        *([f"original    {recipe['original_final_check_map50_95']:.4f} on the same images: "
           f"{recipe['drop_after_finetune'] * 100:.1f} mAP50-95 points lost after the recipe"] if recipe else []),
        *([f"latency     {summary['measured_latency_ms']:.2f} ms measured (ORT, {summary['latency_threads']} "
           f"thread(s), budget {summary['max_latency_ms']} ms)"] if summary["measured_latency_ms"] is not None else []),
        *([f"BO overhead {summary['bo_overhead_share']:.1%} of trial time; "
           f"{summary['mean_trial_eval_seconds']:.1f} s per trial evaluation"]
          if summary["bo_overhead_share"] is not None else []),
    ]
    return lines
