"""The analytic FLOPs model: conv FLOPs from channel counts, plus what the convs do not cover.

Per traced conv, 2 x Cin/groups x Cout x k^2 x output area, with Cin and Cout linear in the
kept fraction of every part (vectorised over candidates in `PruneSpace.flops`). Ops outside
the traced convs (attention matmuls, transposed convs) are a constant of the pruned model:
measured by torch's counter at two sizes and extrapolated, linear and quadratic in the image
area, because attention grows with the square of its token count.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from yoloprune.structure.space import PruneSpace


def build_flops_model(space: PruneSpace) -> None:
    """Fill `space`'s FLOPs model: per traced conv, which parts set its input and output widths."""
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


def untraced_flops(model: nn.Module, space: PruneSpace) -> float:
    """FLOPs torch's counter sees beyond the traced convs at `space.imgsz` (a*area + b*area^2, fitted at the
    trace size and twice it)."""
    from torch.utils.flop_counter import FlopCounterMode

    size = space.graph.trace_imgsz
    conv_flops = space.flops()[0] - space.other_flops
    extra = []
    for k in (1, 2):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model.eval()(torch.zeros(1, 3, k * size, k * size))
        extra.append(counter.get_total_flops() - conv_flops * (k * size / space.imgsz) ** 2)
    quadratic = max(0.0, (extra[1] - 4 * extra[0]) / 12)  # area x4 at twice the size: u = a*4 + b*16
    linear = max(0.0, extra[0] - quadratic)
    area = (space.imgsz / size) ** 2
    return linear * area + quadratic * area ** 2
