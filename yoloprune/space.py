"""PruneSpace: the named, prunable channel groups of a model and its analytic FLOPs model.

A group is a set of coupled channel units that share one prune rate. Most groups have one
*part*; an equal-size split (C2f's `chunk(2)`) ties two parts that must keep the same
count but may drop different channels. FLOPs are computed from channel counts
(Cin/groups x Cout x k^2 x output area per conv, x2 for multiply-add), vectorised over
many candidates at once, so budget projection costs microseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch.nn as nn

from yoloprune.graph import FIXED, ChannelGraph, trace

MIN_KEEP_SHARE = 0.05


@dataclass
class Group:
    """One prunable group: its name, member convs and parts (arrays of union-find roots)."""

    name: str
    convs: list[str]
    parts: list[np.ndarray]
    min_keep: int = 1
    flops_share: float = 0.0

    @property
    def part_size(self) -> int:
        return len(self.parts[0])

    @property
    def channels(self) -> int:
        return self.part_size * len(self.parts)


@dataclass
class PruneSpace:
    """Prunable groups, held-fixed modules and the FLOPs model of one model at one image size."""

    graph: ChannelGraph
    groups: list[Group]
    fixed: list[dict]
    imgsz: int
    round_to: int
    # FLOPs model: flops(f) = 2 * sum_c w_c * (in_fixed_c + A_in[c] . f) * (out_fixed_c + A_out[c] . f)
    conv_names: list[str] = field(default_factory=list)
    weight: np.ndarray = None
    conv_area: np.ndarray = None  # output pixels of each conv at imgsz
    in_fixed: np.ndarray = None
    a_in: np.ndarray = None
    out_fixed: np.ndarray = None
    a_out: np.ndarray = None
    part_group: np.ndarray = None  # group index of each part
    other_flops: float = 0.0  # FLOPs of ops outside the traced convs (attention matmuls, transposed convs)

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    # -- keep counts ---------------------------------------------------------------
    def kept_count(self, group: Group, rate: float) -> int:
        """Channels kept per part at prune rate `rate`, rounded to `round_to`, >= min_keep."""
        return int(_kept(group.part_size, self._step(group.part_size), group.min_keep, rate))

    def _step(self, size):
        return np.where(np.asarray(size) >= self.round_to, self.round_to, 1)

    def keep_fractions(self, rates: np.ndarray, rounded: bool = True) -> np.ndarray:
        """Per-part kept fraction for a (B, G) array of rates; rounded as the pruner rounds."""
        rates = np.atleast_2d(np.asarray(rates, float))
        size = np.array([g.part_size for g in self.groups], float)
        min_keep = np.array([g.min_keep for g in self.groups], float)
        keep = _kept(size, self._step(size) if rounded else None, min_keep, rates)
        return (keep / size)[:, self.part_group]

    def realised_rates(self, rates: np.ndarray) -> np.ndarray:
        """The rates the pruner actually applies (after rounding and minimum keep), (B, G)."""
        rates = np.atleast_2d(np.asarray(rates, float))
        first_part = np.array([int(np.argmax(self.part_group == i)) for i in range(len(self.groups))])
        return 1.0 - self.keep_fractions(rates)[:, first_part]

    def conv_channels(self, rates: np.ndarray | None = None, rounded: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(input, output) channel counts of every traced conv, each (B, n_convs), for a (B, G) array of rates."""
        if rates is None:
            rates = np.zeros((1, len(self.groups)))
        f = self.keep_fractions(rates, rounded)
        return self.in_fixed + f @ self.a_in.T, self.out_fixed + f @ self.a_out.T

    def flops(self, rates: np.ndarray | None = None, rounded: bool = True) -> np.ndarray:
        """Conv FLOPs (2 x MACs) for a (B, G) array of rates; None means the unpruned model."""
        cin, cout = self.conv_channels(rates, rounded)
        return 2.0 * (cin * cout) @ self.weight + self.other_flops

    def flops_ratio(self, rates: np.ndarray, rounded: bool = True) -> np.ndarray:
        return self.flops(rates, rounded) / self.flops()[0]

    def rates_vector(self, rates: dict[str, float]) -> np.ndarray:
        """Dict {group: rate} (missing groups: 0) as a vector in group order."""
        index = {n: i for i, n in enumerate(self.names)}
        v = np.zeros(len(self.groups))
        for name, r in rates.items():
            v[index[name]] = r
        return v


def _kept(size, step, min_keep, rate):
    """Kept channels: size x (1 - rate) rounded to the nearest multiple of `step` or to the full size
    (so rate 0 keeps everything), within [min_keep, size]; step None: unrounded."""
    keep = size * (1.0 - np.asarray(rate, float))
    if step is not None:
        rounded = np.round(keep / step) * step
        keep = np.where(np.abs(size - keep) <= np.abs(rounded - keep), size, rounded)
    return np.minimum(size, np.maximum(min_keep, keep))


def analyse(model: nn.Module, imgsz: int = 640, round_to: int = 8) -> PruneSpace:
    """Trace `model` and return its prunable groups and FLOPs model at `imgsz`."""
    stride = int(max(getattr(model, "stride", [32]))) if hasattr(model, "stride") else 32
    graph = trace(model, imgsz=2 * max(stride, 32))
    uf = graph.uf
    order = {n: i for i, n in enumerate(graph.convs)}

    members: dict[int, set[str]] = {}
    root_order: list[int] = []
    for node in graph.convs.values():
        for u in graph.out_units(node):
            r = uf.find(int(u))
            if uf.fixed_reason(r) is None:
                if r not in members:
                    members[r] = set()
                    root_order.append(r)
                members[r].add(node.name)

    by_signature: dict[frozenset, list[int]] = {}
    for r in root_order:
        by_signature.setdefault(frozenset(members[r]), []).append(r)
    signatures = list(by_signature)
    sig_of_root = {r: i for i, s in enumerate(signatures) for r in by_signature[s]}

    # merge signature groups tied by equal splits into multi-part groups
    parent = list(range(len(signatures)))
    parts: dict[int, list[frozenset]] = {}
    bad: set[int] = set()

    def top(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for slices in graph.ties:
        roots = [[graph.root(int(s)) for s in sl] for sl in slices]
        flat = [r for sl in roots for r in sl]
        touched = {sig_of_root[r] for r in flat if r in sig_of_root}
        ok = FIXED not in flat and all(r in sig_of_root for r in flat) and len(set(flat)) == len(flat)
        if ok:
            covered = {r for i in touched for r in by_signature[signatures[i]]}
            ok = covered == set(flat)
        tops = {top(i) for i in touched}
        if not ok:
            bad |= tops
            continue
        new_parts = sorted((frozenset(sl) for sl in roots), key=lambda s: min(s))
        for i in tops:
            if i in parts and sorted(parts[i], key=lambda s: min(s)) != new_parts:
                bad.add(i)
        t = min(tops)
        if tops & bad:
            bad.add(t)
        for i in tops:
            parent[i] = t
            parts.pop(i, None)
        if t not in bad:
            parts[t] = new_parts

    groups_by_top: dict[int, list[int]] = {}
    for i in range(len(signatures)):
        groups_by_top.setdefault(top(i), []).append(i)

    groups: list[Group] = []
    fixed: list[dict] = []
    used_names: set[str] = set()
    for t, sig_ids in groups_by_top.items():
        convs = sorted({c for i in sig_ids for c in signatures[i]}, key=order.get)
        if t in bad:
            fixed += [{"module": _short(c), "reason": "channel split that yoloprune cannot keep valid"}
                      for c in convs]
            continue
        if t in parts:
            group_parts = [np.array(sorted(p, key=lambda r: r)) for p in parts[t]]
        else:
            group_parts = [np.array([r for i in sig_ids for r in by_signature[signatures[i]]])]
        name = _short(convs[0])
        while name in used_names:
            name += "'"
        used_names.add(name)
        groups.append(Group(name, convs, group_parts))

    for node in graph.convs.values():
        reasons = {uf.fixed_reason(int(u)) for u in graph.out_units(node)} - {None}
        if reasons:
            fixed.append({"module": _short(node.name), "reason": sorted(reasons)[0]})

    groups.sort(key=lambda g: order[g.convs[0]])
    space = PruneSpace(graph, groups, fixed, imgsz, round_to)
    _hold_groups_that_break(model, space)
    for g in groups:
        step = round_to if g.part_size >= round_to else 1
        g.min_keep = min(g.part_size, step * math.ceil(MIN_KEEP_SHARE * g.part_size / step))
    _build_flops_model(space)
    space.other_flops = _untraced_flops(model, space)
    total = space.flops()[0]
    for i, g in enumerate(groups):
        rates = np.zeros((1, len(groups)))
        rates[0, i] = 1.0
        g.flops_share = float(1.0 - space.flops(rates, rounded=False)[0] / total) if total else 0.0
    return space


def _hold_groups_that_break(model: nn.Module, space: PruneSpace) -> None:
    """Prune every group by half and run the model; hold fixed the groups that break it.

    The trace cannot see a forward that reads a channel count from a shape (attention
    blocks do); running the pruned model catches those, bisecting only when one fails.
    """
    import torch

    from yoloprune.pruner import prune

    x = torch.zeros(1, 3, space.graph.trace_imgsz, space.graph.trace_imgsz)

    def runs(groups: list[Group]) -> bool:
        probe = PruneSpace(space.graph, groups, [], space.imgsz, 1)
        try:
            with torch.no_grad():
                prune(model, probe, {g.name: 0.5 for g in groups}).eval()(x)
            return True
        except Exception:  # noqa: BLE001 - any failure of the pruned forward means: hold these groups fixed
            return False

    def breaking(groups: list[Group]) -> list[Group]:
        if not groups or runs(groups):
            return []
        if len(groups) == 1:
            return groups
        half = len(groups) // 2
        found = breaking(groups[:half]) + breaking(groups[half:])
        return found or groups  # the halves run alone but not together: hold them all

    for g in breaking(space.groups):
        space.groups.remove(g)
        space.fixed += [{"module": _short(c), "reason": "its forward reads the channel count (held fixed)"}
                        for c in g.convs]


def _build_flops_model(space: PruneSpace) -> None:
    graph = space.graph
    root_part: dict[int, int] = {}
    part_group = []
    for gi, g in enumerate(space.groups):
        for p in g.parts:
            for r in p:
                root_part[int(r)] = len(part_group)
            part_group.append(gi)
    n_parts, convs = len(part_group), list(graph.convs.values())
    a_in = np.zeros((len(convs), n_parts))
    a_out = np.zeros((len(convs), n_parts))
    in_fixed = np.zeros(len(convs))
    out_fixed = np.zeros(len(convs))
    weight = np.zeros(len(convs))
    area = np.zeros(len(convs))
    scale = (space.imgsz / graph.trace_imgsz) ** 2
    for ci, node in enumerate(convs):
        m = node.module
        for u in graph.out_units(node):
            p = root_part.get(graph.root(int(u)))
            if p is None:
                out_fixed[ci] += 1
            else:
                a_out[ci, p] += 1
        if m.groups == 1:
            for s in node.in_sources:
                p = root_part.get(graph.root(int(s)))
                if p is None:
                    in_fixed[ci] += 1
                else:
                    a_in[ci, p] += 1
        else:
            in_fixed[ci] = m.in_channels // m.groups
        area[ci] = node.area * scale
        weight[ci] = m.kernel_size[0] * m.kernel_size[1] * area[ci]
    space.conv_names = [n.name for n in convs]
    space.a_in, space.a_out = a_in, a_out
    space.in_fixed, space.out_fixed, space.weight, space.conv_area = in_fixed, out_fixed, weight, area
    space.part_group = np.array(part_group, int)


def _untraced_flops(model: nn.Module, space: PruneSpace) -> float:
    """FLOPs torch's counter sees beyond the traced convs, measured at the trace size and scaled by area."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    size = space.graph.trace_imgsz
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    traced = space.flops()[0] * (size / space.imgsz) ** 2
    return max(0.0, counter.get_total_flops() - traced) * (space.imgsz / size) ** 2


def _short(conv_name: str) -> str:
    """`model.4.m.0.cv1.conv` -> `model.4.m.0.cv1` (Ultralytics Conv wraps nn.Conv2d as .conv)."""
    return conv_name[: -len(".conv")] if conv_name.endswith(".conv") else conv_name
