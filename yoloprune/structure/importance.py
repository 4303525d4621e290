"""Channel importance criteria, scored over whole coupled groups (plug-ins of the pruner).

Each criterion scores the output filters of one conv (or the channels of one BatchNorm);
scores are divided by their mean within that layer so layers of different scale
compare, then averaged over every layer a coupled channel unit spans.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from yoloprune.structure.graph import FIXED
from yoloprune.structure.space import PruneSpace


def _filters(w: torch.Tensor) -> torch.Tensor:
    return w.detach().float().flatten(1)


def l1(w: torch.Tensor) -> torch.Tensor:
    """L1 norm of each filter."""
    return _filters(w).abs().sum(1)


def l2(w: torch.Tensor) -> torch.Tensor:
    """L2 norm of each filter."""
    return _filters(w).norm(dim=1)


def fpgm(w: torch.Tensor) -> torch.Tensor:
    """Summed distance to all other filters: filters near the geometric median are redundant."""
    f = _filters(w)
    return torch.cdist(f, f).sum(1)


def magnitude_similarity(w: torch.Tensor) -> torch.Tensor:
    """Filter norm times dissimilarity to its most similar neighbour (magnitude + similarity)."""
    f = _filters(w)
    norm = f.norm(dim=1)
    unit = f / norm.clamp_min(1e-12)[:, None]
    cos = unit @ unit.T
    cos.fill_diagonal_(-1.0)
    similarity = cos.max(1).values.clamp(0, 1) if len(f) > 1 else torch.zeros(len(f))
    return (norm / norm.mean().clamp_min(1e-12)) * (1.0 - similarity + 1e-3)


FILTER_CRITERIA: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "l1": l1, "l2": l2, "fpgm": fpgm, "msv": magnitude_similarity,
}
CRITERIA = (*FILTER_CRITERIA, "bn")
# BatchNorm scale (network slimming): on the bundled default and on a model trained without a
# sparsity penalty it kept more mAP at equal FLOPs than filter norms (README, "Pruning").
DEFAULT_CRITERION = "bn"


BN_FALLBACK = "l1"


Criterion = str | dict  # one criterion for every group, or {group name: criterion} (search --criterion auto)


def effective_criterion(space: PruneSpace, criterion: Criterion) -> Criterion:
    """The criterion that really ranks channels: `bn` on a model without BatchNorm falls back to BN_FALLBACK."""
    if isinstance(criterion, dict):
        return {g: effective_criterion(space, c) for g, c in criterion.items()}
    return BN_FALLBACK if criterion == "bn" and not space.graph.bns else criterion


def unknown_criterion(criterion: Criterion) -> str | None:
    """The first name in `criterion` that is not one of CRITERIA, if any."""
    names = criterion.values() if isinstance(criterion, dict) else [criterion]
    return next((c for c in names if c not in CRITERIA), None)


def unit_scores(space: PruneSpace, criterion: Criterion = DEFAULT_CRITERION) -> dict[int, float]:
    """Importance of every prunable channel unit (union-find root), larger = keep; with a per-group criterion,
    each group's units are ranked by its own (groups not named: the default)."""
    if unknown_criterion(criterion) is not None:
        raise ValueError(f"unknown criterion '{unknown_criterion(criterion)}' (choose from {', '.join(CRITERIA)})")
    if isinstance(criterion, dict):
        per = {c: unit_scores(space, c) for c in {*criterion.values(), DEFAULT_CRITERION}}
        own = {g.name: per[criterion.get(g.name, DEFAULT_CRITERION)] for g in space.groups}
        return {int(r): own[g.name][int(r)] for g in space.groups for part in g.parts for r in part
                if int(r) in own[g.name]}
    criterion = effective_criterion(space, criterion)
    graph = space.graph
    total: dict[int, float] = {}
    count: dict[int, int] = {}

    def add(roots: np.ndarray, scores: torch.Tensor) -> None:
        scores = scores.detach().float().cpu()
        s = (scores / scores.mean().clamp_min(1e-12)).numpy()
        for r, v in zip(roots, s):
            if r != FIXED:
                total[int(r)] = total.get(int(r), 0.0) + float(v)
                count[int(r)] = count.get(int(r), 0) + 1

    if criterion == "bn":
        for bn, src in graph.bns.values():
            add(np.array([graph.root(int(s)) for s in src]), bn.weight.detach().abs().float())
    else:
        fn = FILTER_CRITERIA[criterion]
        for node in graph.convs.values():
            roots = np.array([graph.root(int(u)) for u in graph.out_units(node)])
            add(roots, fn(node.module.weight))
    return {r: total[r] / count[r] for r in total}
