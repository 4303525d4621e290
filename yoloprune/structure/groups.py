"""Grouping: which traced channel units form one prunable group, and which modules are held fixed.

Units that feed exactly the same convs form a group; an equal-size split ties several such
groups into one multi-part group (C2f's `chunk(2)`: both halves keep the same count). The
break probe then removes groups whose pruned forward fails, and the FLOPs model is built.
"""

from __future__ import annotations

import math

import numpy as np
import torch.nn as nn

from yoloprune.errors import UserError
from yoloprune.structure.cost import build_flops_model, untraced_flops
from yoloprune.structure.graph import FIXED, trace
from yoloprune.structure.probe import hold_groups_that_break
from yoloprune.structure.space import Group, PruneSpace, short_name

MIN_KEEP_SHARE = 0.05


def analyse(model: nn.Module, imgsz: int = 640, round_to: int = 8) -> PruneSpace:
    """Trace `model` and return its prunable groups and FLOPs model at `imgsz`."""
    if round_to < 1:
        raise UserError(f"--round-to must be >= 1, got {round_to}")
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
            fixed += [{"module": short_name(c), "reason": "channel split that yoloprune cannot keep valid"}
                      for c in convs]
            continue
        if t in parts:
            group_parts = [np.array(sorted(p, key=lambda r: r)) for p in parts[t]]
        else:
            group_parts = [np.array([r for i in sig_ids for r in by_signature[signatures[i]]])]
        name = short_name(convs[0])
        while name in used_names:
            name += "'"
        used_names.add(name)
        groups.append(Group(name, convs, group_parts))

    for node in graph.convs.values():
        reasons = {uf.fixed_reason(int(u)) for u in graph.out_units(node)} - {None}
        if reasons:
            fixed.append({"module": short_name(node.name), "reason": sorted(reasons)[0]})

    groups.sort(key=lambda g: order[g.convs[0]])
    space = PruneSpace(graph, groups, fixed, imgsz, round_to)
    hold_groups_that_break(model, space)
    for g in groups:
        step = round_to if g.part_size >= round_to else 1
        g.min_keep = min(g.part_size, step * math.ceil(MIN_KEEP_SHARE * g.part_size / step))
    build_flops_model(space)
    space.other_flops = untraced_flops(model, space)
    total = space.flops()[0]
    for i, g in enumerate(groups):
        rates = np.zeros((1, len(groups)))
        rates[0, i] = 1.0
        g.flops_share = float(1.0 - space.flops(rates, rounded=False)[0] / total) if total else 0.0
    return space
