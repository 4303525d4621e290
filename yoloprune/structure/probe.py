"""The break probe: prune every group by half and run the model; hold fixed the groups that break it.

The trace cannot see a forward that reads a channel count from a shape (attention blocks
do); running the pruned model catches those, bisecting only when one fails. The probe runs
the three forwards a pruned model meets later: training mode (recoveries and fine-tunes),
eval mode, and the Conv+BN-fused model (every evaluation and export fuses).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from yoloprune.evaluation.inference import fuse
from yoloprune.structure.pruner import prune
from yoloprune.structure.space import Group, PruneSpace, short_name

PROBE_RATE = 0.5


def forwards_run(model: nn.Module, x: torch.Tensor) -> None:
    """Run `model` (changed in place: its BN statistics, then fused) in training, eval and fused eval mode."""
    with torch.no_grad():
        model.train()(x)
        model.eval()(x)
        fuse(model)(x)


def hold_groups_that_break(model: nn.Module, space: PruneSpace) -> None:
    """Remove from `space` (into `space.fixed`) every group whose pruned model fails a forward."""
    size = space.graph.trace_imgsz
    x = torch.zeros(2, 3, size, size)  # two images: BatchNorm in training mode needs more than one value

    def runs(groups: list[Group]) -> bool:
        probe = PruneSpace(space.graph, groups, [], space.imgsz, 1)
        try:
            forwards_run(prune(model, probe, {g.name: PROBE_RATE for g in groups}), x)
            return True
        except Exception:  # noqa: BLE001 - any failure of a pruned forward means: hold these groups fixed
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
        space.fixed += [{"module": short_name(c), "reason": "its forward reads the channel count (held fixed)"}
                        for c in g.convs]
