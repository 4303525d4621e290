"""Structural pruning: apply {group: rate} to a copy of a model, removing channels for real.

Output filters of every conv in a group, the matching input slices of every consumer and
the BatchNorm entries go together; depthwise convs follow their input; width attributes
that stock forwards read (`c` of C2f, C3k2, C2PSA, ...) are updated, so the result is a
stock Ultralytics model.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from yoloprune.errors import UserError
from yoloprune.structure.graph import FIXED
from yoloprune.structure.importance import (
    CRITERIA,
    DEFAULT_CRITERION,
    Criterion,
    effective_criterion,
    unit_scores,
    unknown_criterion,
)
from yoloprune.structure.space import PruneSpace


@dataclass
class PruneResult:
    """A pruned model with its rates and what it costs against the original."""

    model: nn.Module
    rates: dict[str, float]
    flops_before: float
    flops_after: float
    params_before: int
    params_after: int
    criterion: Criterion

    def provenance(self) -> dict:
        """What a saved checkpoint records about this pruning."""
        return {"rates": self.rates, "criterion": self.criterion, "flops_before": self.flops_before,
                "flops_after": self.flops_after, "params_before": self.params_before,
                "params_after": self.params_after}


def check_rates(space: PruneSpace, rates: dict[str, float]) -> None:
    """Raise UserError on unknown group names or rates outside [0, 1)."""
    unknown = sorted(set(rates) - set(space.names))
    if unknown:
        raise UserError(f"unknown group name(s): {', '.join(unknown[:5])} (list them with 'yoloprune layers')")
    bad = {k: v for k, v in rates.items() if not 0.0 <= v < 1.0}
    if bad:
        name, value = next(iter(bad.items()))
        raise UserError(f"prune rate of '{name}' is {value}; rates are the fraction removed, in [0, 1)")


def prune_by_rates(model: nn.Module, space: PruneSpace, rates: dict[str, float],
                   criterion: Criterion = DEFAULT_CRITERION) -> PruneResult:
    """Check `rates` ({group: fraction removed}) and prune a copy of `model` by them, with its FLOPs and params."""
    if unknown_criterion(criterion) is not None:
        raise UserError(f"unknown criterion '{unknown_criterion(criterion)}' (choose from {', '.join(CRITERIA)})")
    check_rates(space, rates)
    pruned = prune(model, space, rates, criterion)
    vec = space.rates_vector(rates)[None]
    return PruneResult(pruned, dict(rates), float(space.flops()[0]), float(space.flops(vec)[0]),
                       param_count(model), param_count(pruned), effective_criterion(space, criterion))


def param_count(model: nn.Module) -> int:
    """Number of parameters of a model."""
    return int(sum(p.numel() for p in model.parameters()))


def removed_units(space: PruneSpace, rates: dict[str, float], criterion: Criterion = DEFAULT_CRITERION,
                  scores: dict[int, float] | None = None) -> set[int]:
    """Union-find roots to remove: per part, the lowest-scored channels beyond the kept count."""
    unknown = sorted(set(rates) - set(space.names))
    if unknown:
        raise KeyError(f"unknown group name(s): {', '.join(unknown)}")
    for name, r in rates.items():
        if not 0.0 <= float(r) < 1.0:
            raise ValueError(f"rate of group '{name}' is {r}; prune rates must lie in [0, 1)")
    scores = unit_scores(space, criterion) if scores is None else scores
    removed: set[int] = set()
    for g in space.groups:
        rate = float(rates.get(g.name, 0.0))
        keep = space.kept_count(g, rate)
        for part in g.parts:
            order = sorted(part, key=lambda r: (-scores.get(int(r), 0.0), int(r)))
            removed.update(int(r) for r in order[keep:])
    return removed


def prune(model: nn.Module, space: PruneSpace, rates: dict[str, float], criterion: Criterion = DEFAULT_CRITERION,
          removed: set[int] | None = None) -> nn.Module:
    """A pruned deep copy of `model` (the analysed one); `model` itself is untouched."""
    if removed is None:
        removed = removed_units(space, rates, criterion)
    graph = space.graph
    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    widths = _split_width_owners(pruned)

    def kept(sources: np.ndarray) -> torch.Tensor:
        return torch.tensor([i for i, s in enumerate(sources)
                             if s == FIXED or graph.root(int(s)) not in removed], dtype=torch.long)

    for node in graph.convs.values():
        conv: nn.Conv2d = modules[node.name]
        out_idx = kept(graph.out_units(node))
        w = conv.weight.data[out_idx]
        if conv.groups == 1:
            in_idx = kept(node.in_sources)
            w = w[:, in_idx]
            conv.in_channels = len(in_idx)
        elif node.depthwise:
            conv.in_channels = conv.groups = len(out_idx)
        conv.out_channels = len(out_idx)
        conv.weight = nn.Parameter(w.contiguous(), requires_grad=conv.weight.requires_grad)
        if conv.bias is not None:
            conv.bias = nn.Parameter(conv.bias.data[out_idx].contiguous(), requires_grad=conv.bias.requires_grad)
    for name, (_, src) in graph.bns.items():
        bn: nn.BatchNorm2d = modules[name]
        idx = kept(src)
        bn.num_features = len(idx)
        bn.weight = nn.Parameter(bn.weight.data[idx].contiguous(), requires_grad=bn.weight.requires_grad)
        bn.bias = nn.Parameter(bn.bias.data[idx].contiguous(), requires_grad=bn.bias.requires_grad)
        bn.running_mean = bn.running_mean[idx].contiguous()
        bn.running_var = bn.running_var[idx].contiguous()
    for owner in widths:
        owner.c = owner.cv1.conv.out_channels // 2
    return pruned


@contextlib.contextmanager
@torch.no_grad()
def zeroed(model: nn.Module, space: PruneSpace, removed: set[int]):
    """`model` with the `removed` units' filters, conv biases and BN affine set to zero, in place and restored on
    exit: the outputs of the pruned model without building one, where a removed channel's activation of 0 is 0
    (SiLU, ReLU: tests/test_pruning.py checks every family)."""
    graph = space.graph
    modules = dict(model.named_modules())
    hit = []  # (tensor, indices of removed channels)
    for node in graph.convs.values():
        idx = [i for i, u in enumerate(graph.out_units(node)) if graph.root(int(u)) in removed]
        conv = modules[node.name]
        hit += [(t, idx) for t in (conv.weight, conv.bias) if t is not None and idx]
    for name, (_, src) in graph.bns.items():
        idx = [i for i, u in enumerate(src) if u != FIXED and graph.root(int(u)) in removed]
        hit += [(t, idx) for t in (modules[name].weight, modules[name].bias) if idx]
    saved = [t.data[idx].clone() for t, idx in hit]
    try:
        for t, idx in hit:
            t.data[idx] = 0
        yield model
    finally:
        for (t, idx), v in zip(hit, saved):
            t.data[idx] = v


def _split_width_owners(model: nn.Module) -> list[nn.Module]:
    """Blocks whose `c` is half of `cv1`'s output (the C2f / C3k2 / ELAN / PSA family)."""
    return [m for m in model.modules()
            if isinstance(getattr(m, "c", None), int) and isinstance(getattr(m, "cv1", None), nn.Module)
            and isinstance(getattr(m.cv1, "conv", None), nn.Conv2d) and m.cv1.conv.out_channels == 2 * m.c]
