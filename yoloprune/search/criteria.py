"""`--criterion auto` (LFPC's idea: the right pruning criterion differs from layer to layer).

Each group gets the criterion whose choice of channels, when PROBE_RATE of that group alone goes (zeroed in
place with BN statistics as trained, which gives the pruned model's outputs), leaves the class-score maps
closest to the unpruned model's (mean cosine similarity, evaluation/scores.py) on PROBE_IMAGES search-slice
images; ties go to the default criterion. Criteria that pick the same channels are scored once. Cost: at
most groups x criteria forward passes of those images (logged; benchmarks/search_quality.py, hdbo-auto).
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn

from yoloprune.errors import UserError
from yoloprune.evaluation.scores import agreement, class_maps
from yoloprune.structure.importance import CRITERIA, DEFAULT_CRITERION, effective_criterion, unit_scores
from yoloprune.structure.pruner import removed_units, zeroed
from yoloprune.structure.space import PruneSpace

AUTO = "auto"
CRITERION_CHOICES = (*CRITERIA, AUTO)
PROBE_RATE = 0.5
PROBE_IMAGES = 8


def choose_criteria(model: nn.Module, space: PruneSpace, pixels: torch.Tensor, log=None) -> dict[str, str]:
    """{group: criterion} for `model`, probed on letterboxed `pixels` (N, 3, H, W) uint8."""
    if getattr(model.model[-1], "end2end", False):
        raise UserError("--criterion auto compares per-anchor class maps; an end-to-end head has none "
                        "(name a criterion instead)")
    t0 = time.perf_counter()
    pixels = pixels[:PROBE_IMAGES]
    reference = class_maps(model, pixels, fuse=False)
    # the default first, so that it wins ties; a model without BatchNorm ranks 'bn' as 'l1': score it once
    names = dict.fromkeys(effective_criterion(space, c) for c in (DEFAULT_CRITERION, *CRITERIA))
    scores = {c: unit_scores(space, c) for c in names}
    choice, probes = {}, 0
    for g in space.groups:
        rates = {g.name: PROBE_RATE}
        kept: dict[frozenset, float] = {}
        best, best_value = None, -float("inf")
        for c, s in scores.items():
            removed = frozenset(removed_units(space, rates, scores=s))
            if removed not in kept:
                with zeroed(model, space, removed) as probe:
                    kept[removed] = agreement(class_maps(probe, pixels, fuse=False), reference)
                probes += 1
            if kept[removed] > best_value:
                best, best_value = c, kept[removed]
        choice[g.name] = best
    if log:
        counts = {c: list(choice.values()).count(c) for c in names}
        log(f"criterion auto: {', '.join(f'{c} {n}' for c, n in counts.items() if n)} of {len(choice)} groups "
            f"({probes} probes on {len(pixels)} images, {time.perf_counter() - t0:.0f} s)")
    return choice
