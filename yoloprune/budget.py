"""Projection of proposed rates onto a FLOPs budget band (exact, vectorised; never learned).

A proposal x (one prune rate per group) is shifted by a common t, x' = clip(x + t, 0, r_max),
with t the smallest shift (found by bisection) whose realised FLOPs, rounding included, meet
the target: proposals land just under the budget, where the optimum of "most mAP under a
budget" lies; no trial is spent far inside it, and none above it.
"""

from __future__ import annotations

import numpy as np

from yoloprune.errors import UserError
from yoloprune.space import PruneSpace

MAX_RATE = 0.9


class Budget:
    """FLOPs budget (fraction of the unpruned model's FLOPs kept) with projection onto it."""

    def __init__(self, space: PruneSpace, target_flops: float, max_rate: float = MAX_RATE):
        if not 0.0 < target_flops < 1.0:
            raise UserError(f"--target-flops {target_flops} must lie in (0, 1): it is the fraction of FLOPs KEPT")
        self.space, self.target, self.max_rate = space, float(target_flops), max_rate
        floor = float(space.flops_ratio(np.full((1, len(space.groups)), max_rate))[0])
        if floor > self.target:
            raise UserError(f"--target-flops {target_flops} is impossible: pruning every group to its limit keeps "
                            f"{floor:.1%} of the FLOPs (fixed layers and minimum keep counts); ask for at least "
                            f"{np.ceil(floor * 100) / 100:.2f}")

    def ratio(self, rates: np.ndarray) -> np.ndarray:
        return self.space.flops_ratio(np.atleast_2d(rates))

    def project(self, rates: np.ndarray, iters: int = 40) -> np.ndarray:
        """Realised rates of each row of `rates` (B, G), shifted onto the budget band."""
        x = np.clip(np.atleast_2d(np.asarray(rates, float)), 0.0, self.max_rate)
        lo = np.full(len(x), -1.0)  # shift that surely keeps too much (over budget unless x is deep)
        hi = np.full(len(x), 1.0)  # shift that surely meets the budget (every rate at max)
        for _ in range(iters):
            mid = (lo + hi) / 2
            ok = self.ratio(np.clip(x + mid[:, None], 0.0, self.max_rate)) <= self.target
            hi = np.where(ok, mid, hi)
            lo = np.where(ok, lo, mid)
        return self.space.realised_rates(np.clip(x + hi[:, None], 0.0, self.max_rate))
