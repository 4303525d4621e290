"""Per-group sensitivity, the peers' method (FastNAS, AIMET, NetAdapt): score each group alone at a few rates,
then allocate rates to meet the budget. A baseline strategy, and hdbo's warm start.

The scan prunes one *block* of groups at a time (each group its own block when the trial budget allows levels
x groups evaluations, else contiguous blocks in network order) at fractions of the maximum rate, recalibrated
and scored like any trial. With the unpruned model's score (the scan's first point), each block has a loss
curve: loss against rate, interpolated linearly in rate squared (a one-level scan reads as a parabola) and
made monotone. The allocation minimises the summed losses under the budget: for a multiplier mu every block
takes the rate minimising loss(r) - mu * FLOPs saved(r) (its FLOPs saved with the other groups unpruned,
exact; on a latency front, the estimated ms saved), and mu is bisected to the smallest value whose realised
rates meet the budget; the blocks that step at that threshold step one by one, in network order, the last one
only as far as the budget needs (the losses are not convex in the FLOPs saved, so a block may jump from a
moderate rate to the maximum at one threshold: taken whole, the jump overshot the budget, 43.7% of the FLOPs
kept for a 50% budget on the default model with 6 blocks). A larger mu never lowers a block's rate, and a
tighter budget only carries the stepping further, so a tighter budget never raises a group's kept channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from yoloprune.errors import UserError
from yoloprune.search.budget import Budget

LEVELS = (0.25, 0.5, 0.75)  # scanned rates, as fractions of the maximum rate
GRID = 181  # candidate rates per block in the allocation


@dataclass
class ScanPlan:
    """Which groups are pruned together (blocks) and at which rates; `points` are the scan's trials."""

    blocks: list[np.ndarray]
    levels: np.ndarray  # absolute rates
    points: np.ndarray  # (1 + blocks x levels, G) realised rates: the unpruned model, then block-major


def scan_size(n_groups: int, evaluations: int, n_levels: int) -> int:
    """Blocks a scan of at most `evaluations` trials (the unpruned point included) can afford."""
    return min(n_groups, (evaluations - 1) // n_levels)


def plan_scan(budget: Budget, evaluations: int, levels=LEVELS) -> ScanPlan:
    """A scan of at most `evaluations` trials: as many blocks as fit, each at every level."""
    space = budget.space
    g = len(space.groups)
    k = scan_size(g, evaluations, len(levels))
    if k < 1:
        raise UserError(f"a sensitivity scan at {len(levels)} rate(s) needs at least {len(levels) + 1} trials, "
                        f"got {evaluations}")
    blocks = np.array_split(np.arange(g), k)
    rates = np.asarray(levels, float) * budget.max_rate
    points = np.zeros((1 + k * len(rates), g))
    for b, block in enumerate(blocks):
        for j, r in enumerate(rates):
            points[1 + b * len(rates) + j, block] = r
    return ScanPlan(blocks, rates, space.realised_rates(points))


def scan_scores(plan: ScanPlan, rates: np.ndarray, scores: np.ndarray) -> np.ndarray | None:
    """The score of every scan point, looked up by content in the finished trials; None while one is missing."""
    seen = {tuple(np.round(r, 6)): s for r, s in zip(rates, scores)}
    found = [seen.get(tuple(np.round(p, 6))) for p in plan.points]
    return None if any(s is None for s in found) else np.array(found, float)


def loss_curves(plan: ScanPlan, scores: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(blocks, n) loss of each block alone at its mean realised rates `x` (blocks, n): monotone, interpolated
    in rate squared through the scanned points and extrapolated past the last along the last segment."""
    k, n_levels = len(plan.blocks), len(plan.levels)
    base, per = scores[0], scores[1:].reshape(k, n_levels)
    loss = np.maximum.accumulate(np.maximum(base - per, 0.0), axis=1)
    scanned = np.array([[plan.points[1 + b * n_levels + j, block].mean() for j in range(n_levels)]
                        for b, block in enumerate(plan.blocks)])
    curves = np.empty(x.shape)
    for b in range(k):
        x2 = np.concatenate([[0.0], np.maximum.accumulate(scanned[b]) ** 2])
        y = np.concatenate([[0.0], loss[b]])
        slope = (y[-1] - y[-2]) / max(x2[-1] - x2[-2], 1e-12)
        q = x[b] ** 2
        curves[b] = np.where(q <= x2[-1], np.interp(q, x2, y), y[-1] + slope * (q - x2[-1]))
    return curves


def allocate(budget: Budget, plan: ScanPlan, scores: np.ndarray, iters: int = 60,
             level: float | None = None) -> np.ndarray:
    """Realised rates (G,) at equal marginal loss per FLOP saved, on the budget (see the module docstring); with
    `level`, on that cost of a front search's axis as well (Budget.feasible's levels)."""
    space = budget.space

    def meets(rates: np.ndarray) -> np.ndarray:
        rates = np.atleast_2d(rates)
        return budget.feasible(rates, None if level is None else np.full(len(rates), level))

    k, g = len(plan.blocks), len(space.groups)
    grid = np.linspace(0.0, budget.max_rate, GRID)
    alone = np.zeros((k, GRID, g))
    for b, block in enumerate(plan.blocks):
        alone[b][:, block] = grid[:, None]
    alone = space.realised_rates(alone.reshape(-1, g)).reshape(k, GRID, g)
    axis = budget.cost if budget.front else budget.ratio  # a front's own cost (FLOPs or ms); FLOPs for one budget
    saved = (axis(np.zeros((1, g)))[0] - axis(alone.reshape(-1, g))).reshape(k, GRID)
    loss = loss_curves(plan, scores, np.stack([alone[b][:, block].mean(1) for b, block in enumerate(plan.blocks)]))

    def picks_at(mu: float) -> np.ndarray:
        return np.argmin(loss - mu * saved, axis=1)  # the smallest minimiser: monotone in mu, no cut a zero loss allows

    def rates_of(picks: np.ndarray) -> np.ndarray:
        rates = np.zeros(g)
        for b, block in enumerate(plan.blocks):
            rates[block] = alone[b, picks[b], block]
        return rates

    hi = 1.0
    while not meets(rates_of(picks_at(hi)))[0]:
        hi *= 2.0
        if hi > 1e30:  # infeasible even at the maximum rates (a latency estimate recalibrated since Budget())
            return space.realised_rates(np.full(g, budget.max_rate))[0]  # as Budget.project does
    lo = 0.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if meets(rates_of(picks_at(mid)))[0] else (mid, hi)
    below = picks_at(lo)
    return step_onto_budget(meets, alone, plan.blocks, below, picks_at(hi), rates_of(below))


def step_onto_budget(meets: Callable[[np.ndarray], np.ndarray], alone: np.ndarray, blocks: list[np.ndarray],
                     picks: np.ndarray, target: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """At the threshold blocks step from `picks` to `target` (grid indices): one by one in network order, the
    last one only to the first grid rate of its step that `meets` the budget (rows (B, G) -> (B,) bool)."""
    for b, block in enumerate(blocks):
        if picks[b] == target[b]:
            continue
        steps = np.repeat(rates[None], target[b] - picks[b], 0)
        steps[:, block] = alone[b, picks[b] + 1:target[b] + 1][:, block]
        ok = meets(steps)
        if ok.any():
            return steps[int(np.argmax(ok))]
        rates = steps[-1]
    return rates


def scan_report(plan: ScanPlan, names: list[str], scores: np.ndarray) -> dict:
    """The scan as a readable record: each block's groups and its scores by rate (sensitivity.json)."""
    per = scores[1:].reshape(len(plan.blocks), len(plan.levels))
    return {"unpruned_score": float(scores[0]), "rates": plan.levels.tolist(),
            "blocks": [{"groups": [names[i] for i in block], "scores": row.tolist()}
                       for block, row in zip(plan.blocks, per)]}
