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


def effective_criterion(space: PruneSpace, criterion: str) -> str:
    """The criterion that really ranks channels: `bn` on a model without BatchNorm falls back to BN_FALLBACK."""
    return BN_FALLBACK if criterion == "bn" and not space.graph.bns else criterion


def unit_scores(space: PruneSpace, criterion: str = DEFAULT_CRITERION) -> dict[int, float]:
    """Importance of every prunable channel unit (union-find root), larger = keep."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion '{criterion}' (choose from {', '.join(CRITERIA)})")
    criterion = effective_criterion(space, criterion)
    graph = space.graph
    total: dict[int, float] = {}
    count: dict[int, int] = {}

    def add(roots: np.ndarray, scores: torch.Tensor) -> None:
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
