"""Projection of proposed rates onto a FLOPs and/or latency budget (exact, vectorised; never learned).

A proposal x (one prune rate per group) is shifted by a common t, x' = clip(x + t, 0, r_max),
with t the smallest shift (found by bisection) whose realised FLOPs, rounding included, and
estimated latency (latency/model.py, with its margin) meet the budget: proposals land just under it,
where the optimum of "most mAP under a budget" lies; no trial is spent far inside it, and none
above it.
"""

from __future__ import annotations

import numpy as np

from yoloprune.errors import UserError
from yoloprune.structure.space import PruneSpace

MAX_RATE = 0.9


class Budget:
    """FLOPs budget (fraction of the unpruned FLOPs kept) and/or latency budget, with projection onto it."""

    def __init__(self, space: PruneSpace, target_flops: float | None, max_rate: float = MAX_RATE,
                 latency=None, max_latency_ms: float | None = None):
        if target_flops is None and max_latency_ms is None:
            raise UserError("give --target-flops, --max-latency-ms or both")
        if target_flops is not None and not 0.0 < target_flops < 1.0:
            raise UserError(f"--target-flops {target_flops} must lie in (0, 1): it is the fraction of FLOPs KEPT")
        if max_latency_ms is not None and max_latency_ms <= 0:
            raise UserError(f"--max-latency-ms {max_latency_ms} must be > 0")
        self.space, self.target, self.max_rate = space, target_flops, max_rate
        self.latency, self.max_latency_ms = latency, max_latency_ms
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

    def feasible(self, rates: np.ndarray) -> np.ndarray:
        """Which rows of realised rates (B, G) meet every given budget (latency with its margin)."""
        rates = np.atleast_2d(rates)
        ok = np.ones(len(rates), bool)
        if self.target is not None:
            ok &= self.ratio(rates) <= self.target
        if self.max_latency_ms is not None:
            ok &= self.latency.predict(self.space, rates) * (1.0 + self.latency.margin) <= self.max_latency_ms
        return ok

    def project(self, rates: np.ndarray, iters: int = 40) -> np.ndarray:
        """Realised rates of each row of `rates` (B, G), shifted onto the budget band."""
        x = np.clip(np.atleast_2d(np.asarray(rates, float)), 0.0, self.max_rate)
        lo = np.full(len(x), -1.0)  # shift that surely keeps too much (over budget unless x is deep)
        hi = np.full(len(x), 1.0)  # shift that surely meets the budget (every rate at max)
        for _ in range(iters):
            mid = (lo + hi) / 2
            ok = self.feasible(self.space.realised_rates(np.clip(x + mid[:, None], 0.0, self.max_rate)))
            hi = np.where(ok, mid, hi)
            lo = np.where(ok, lo, mid)
        return self.space.realised_rates(np.clip(x + hi[:, None], 0.0, self.max_rate))
