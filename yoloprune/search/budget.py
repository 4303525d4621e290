"""Projection of proposed rates onto a FLOPs and/or latency budget (exact, vectorised; never learned).

A proposal x (one prune rate per group) is shifted by a common t, x' = clip(x + t, 0, r_max),
with t the smallest shift (found by bisection) whose realised FLOPs, rounding included, and
estimated latency (latency/model.py, with its margin) meet the budget: proposals land just under it,
where the optimum of "most mAP under a budget" lies; no trial is spent far inside it, and none
above it.

A front search (`--pareto flops|latency`) projects each proposal onto a level of its own: the
budget then bounds the front's range, and `project(rates, levels)` takes one cost limit per row.
"""

from __future__ import annotations

import numpy as np

from yoloprune.errors import UserError
from yoloprune.structure.space import PruneSpace

MAX_RATE = 0.9


FRONTS = ("flops", "latency")


class Budget:
    """FLOPs budget (fraction of the unpruned FLOPs kept) and/or latency budget, with projection onto it; for a
    front search (`front` one of FRONTS), the upper end of the front's cost range, if any."""

    def __init__(self, space: PruneSpace, target_flops: float | None, max_rate: float = MAX_RATE,
                 latency=None, max_latency_ms: float | None = None, front: str | None = None):
        if target_flops is None and max_latency_ms is None and front is None:
            raise UserError("give --target-flops, --max-latency-ms or both")
        if target_flops is not None and not 0.0 < target_flops < 1.0:
            raise UserError(f"--target-flops {target_flops} must lie in (0, 1): it is the fraction of FLOPs KEPT")
        if max_latency_ms is not None and max_latency_ms <= 0:
            raise UserError(f"--max-latency-ms {max_latency_ms} must be > 0")
        self.space, self.target, self.max_rate = space, target_flops, max_rate
        self.latency, self.max_latency_ms, self.front = latency, max_latency_ms, front
        deepest = np.full((1, len(space.groups)), max_rate)
        floor = float(space.flops_ratio(deepest)[0])
        if target_flops is not None and floor > target_flops:
            raise UserError(f"--target-flops {target_flops} is impossible: pruning every group to its limit keeps "
                            f"{floor:.1%} of the FLOPs (fixed layers and minimum keep counts); ask for at least "
                            f"{np.ceil(floor * 100) / 100:.2f}")
        if max_latency_ms is not None and not self.feasible(space.realised_rates(deepest))[0]:
            fastest = float(latency.predict(space, space.realised_rates(deepest))[0])
            raise UserError(f"a latency budget of {max_latency_ms:.2f} ms is impossible: pruning every group to its "
                            f"limit is estimated at {fastest:.2f} ms (plus a {latency.margin:.0%} margin) with "
                            f"{latency.threads} thread(s)")

    def ratio(self, rates: np.ndarray) -> np.ndarray:
        return self.space.flops_ratio(np.atleast_2d(rates))

    def cost(self, rates: np.ndarray) -> np.ndarray:
        """The front's cost of realised rates (B, G): FLOPs kept (fraction) or estimated latency (ms, no margin)."""
        rates = np.atleast_2d(rates)
        return self.ratio(rates) if self.front == "flops" else self.latency.predict(self.space, rates)

    def cost_range(self) -> tuple[float, float]:
        """(lowest, highest) cost on the front's axis: deepest pruning, and the least pruning that meets every given
        bound (the unpruned model when none is given)."""
        g = len(self.space.groups)
        deepest = self.space.realised_rates(np.full((1, g), self.max_rate))
        return float(self.cost(deepest)[0]), float(self.cost(self.project(np.zeros((1, g))))[0])

    def feasible(self, rates: np.ndarray, levels: np.ndarray | None = None) -> np.ndarray:
        """Which rows of realised rates (B, G) meet every given budget (latency with its margin) and, if given,
        their own level (B,) of the front's cost."""
        rates = np.atleast_2d(rates)
        ok = np.ones(len(rates), bool)
        if self.target is not None:
            ok &= self.ratio(rates) <= self.target
        if self.max_latency_ms is not None:
            ok &= self.latency.predict(self.space, rates) * (1.0 + self.latency.margin) <= self.max_latency_ms
        if levels is not None:
            ok &= self.cost(rates) <= levels
        return ok

    def project(self, rates: np.ndarray, iters: int = 40, levels: np.ndarray | None = None) -> np.ndarray:
        """Realised rates of each row of `rates` (B, G), shifted onto the budget band (or row b onto levels[b])."""
        x = np.clip(np.atleast_2d(np.asarray(rates, float)), 0.0, self.max_rate)
        lo = np.full(len(x), -1.0)  # shift that surely keeps too much (over budget unless x is deep)
        hi = np.full(len(x), 1.0)  # shift that surely meets the budget (every rate at max)
        for _ in range(iters):
            mid = (lo + hi) / 2
            ok = self.feasible(self.space.realised_rates(np.clip(x + mid[:, None], 0.0, self.max_rate)), levels)
            hi = np.where(ok, mid, hi)
            lo = np.where(ok, lo, mid)
        return self.space.realised_rates(np.clip(x + hi[:, None], 0.0, self.max_rate))
