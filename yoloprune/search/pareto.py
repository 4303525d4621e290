"""One search for the whole accuracy-cost front (`search --pareto flops|latency`), by one of two strategies.

`sensitivity` (ScanFront, at the end of this module): one per-group scan whose loss curves serve every level
of the cost axis; the allocation (sensitivity.py) is evaluated at evenly spread levels.

`hdbo` (ParetoHDBO): the cost (FLOPs kept, or the latency model's estimate) is an exact function of the rates, so only
mAP is modelled, by a BoTorch GP as in hdbo. For a deterministic cost the expected hypervolume
improvement of a candidate at cost c has a closed form. The current front is a staircase h(z) (the
best mAP at cost <= z, at least the reference mAP); the candidate adds the integral over z in
[c, ref] of (Y - h(z))+, so EHVI = sum over the staircase's steps k of width_k x EI(best_f = h_k),
computed with BoTorch's analytic LogEI, one call per step, summed in log space. Candidates are
projected, each onto a cost level of its own (budget.py), so every trial lands on a chosen point of
the cost axis.

The initial design is uniform rates at evenly spread levels up to the top of the range (the
unpruned model when no bound is given), the uniform-rate curve the front is plotted against, then
importance-guided and Sobol points at other levels. The top point anchors the front: without it the
last front point's step would reach to the reference cost, and EHVI spent a third of the trials
polishing the least pruned models (measured, benchmarks/README.md). The GP models the gain
over that uniform curve at the same cost, with the cost as one more input: where nothing was tried
it expects the uniform curve plus the mean gain seen so far, not the mean mAP of all trials, so the
search does not chase the collapsed end of the range.
"""

from __future__ import annotations

import numpy as np
import torch

from yoloprune.errors import UserError
from yoloprune.search.sensitivity import LEVELS, allocate, plan_scan, scan_scores, scan_size
from yoloprune.search.strategies import (
    AUTO_SCAN_BLOCKS,
    AUTO_STRATEGY,
    HDBO,
    N_CANDIDATES,
    SCAN_PHASE,
    SearchContext,
    Strategy,
    perturb,
    raw_design,
    unseen,
)

UNIFORM_PHASE = "uniform"
# Candidates: a front has ~20 points to improve where a single search has one incumbent, so 3 in 4 of twice hdbo's
# candidates perturb front points, each kept near its own cost (+- LOCAL_SPREAD of the range; 0.1 in the first
# benchmark unit spread them too far to climb); the rest sample the box at random levels.
FRONT_CANDIDATES = 2 * N_CANDIDATES
LOCAL_SHARE = 0.75
LOCAL_SPREAD = 0.02
# the acquisition's reference mAP, as a share of the best score so far: a point keeping less than this is no model
# to ship, so the collapsed end of the cost axis earns no hypervolume (front.json's hypervolume counts from 0)
REF_SHARE = 0.1


def non_dominated(costs: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats (lower or equal cost and higher value, or equal value and lower
    cost), by increasing cost; of exact duplicates the first is kept."""
    order = np.lexsort((-values, costs))  # by cost, then best value first
    front, best = [], -np.inf
    for i in order:
        if values[i] > best:
            front.append(int(i))
            best = values[i]
    return np.array(front, int)


def steps(front_costs: np.ndarray, front_values: np.ndarray, ref_cost: float,
          ref_value: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The staircase of a front (sorted by cost, values increasing) above the reference point: breakpoints (K+1,)
    from -inf to ref_cost and the value to beat on each of the K intervals (ref_value before the first point)."""
    inside = front_costs < ref_cost
    edges = np.concatenate([[-np.inf], front_costs[inside], [ref_cost]])
    levels = np.maximum(np.concatenate([[ref_value], front_values[inside]]), ref_value)
    return edges, levels


def hypervolume(costs: np.ndarray, values: np.ndarray, ref_cost: float, ref_value: float = 0.0) -> float:
    """Area dominated by the points between (ref_cost, ref_value) and the front (lower cost, higher value)."""
    idx = non_dominated(costs, values)
    c, v = costs[idx], np.maximum(values[idx] - ref_value, 0.0)
    keep = c < ref_cost
    c, v = c[keep], v[keep]
    widths = np.diff(np.concatenate([c, [ref_cost]]))
    return float(np.sum(widths * v))


def segment_widths(costs: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(N, K): how much of each staircase interval [edges[k], edges[k+1]) lies at or above each cost."""
    lo = np.maximum(edges[None, :-1], costs[:, None])
    return np.maximum(edges[None, 1:] - lo, 0.0)


def log_ehvi(model, x: torch.Tensor, costs: np.ndarray, trend: np.ndarray, edges: np.ndarray,
             levels: np.ndarray) -> torch.Tensor:
    """log EHVI (N,) of candidates x (N, d) at known costs (N,), mAP = trend (N,) + the GP's residual: the
    width-weighted analytic EI over the steps."""
    from botorch.acquisition.analytic import LogExpectedImprovement

    widths = torch.tensor(segment_widths(costs, edges), dtype=torch.double)
    trend = torch.tensor(trend, dtype=torch.double)
    terms = []
    with torch.no_grad():
        for k, level in enumerate(levels):
            log_ei = LogExpectedImprovement(model, best_f=(level - trend)[:, None])(x[:, None, :])  # per candidate
            terms.append(log_ei + widths[:, k].clamp_min(1e-300).log())
    return torch.logsumexp(torch.stack(terms, 1), 1)


def spread_levels(lo: float, hi: float, n: int, top: bool = True) -> np.ndarray:
    """n costs evenly spread over (lo, hi], or over (lo, hi) without the `top`."""
    return lo + (hi - lo) * (np.arange(n) + 1.0) / (n + (0 if top else 1))


def uniform_count(ctx: SearchContext) -> int:
    """How many of the initial design's points are uniform rates (at evenly spread levels)."""
    return max(2, ctx.n_init // 2)


class ParetoHDBO(HDBO):
    """The front search: hdbo's GP and candidates, each projected onto a level of the cost range, chosen by EHVI."""

    name = "pareto"

    def __init__(self, ctx: SearchContext) -> None:
        super().__init__(ctx)
        self._uniform = {tuple(np.round(p, 6)) for p in self.init[:uniform_count(ctx)]}

    @staticmethod
    def design(ctx: SearchContext) -> np.ndarray:
        lo, hi = ctx.budget.cost_range()
        n_uniform = uniform_count(ctx)
        levels = spread_levels(lo, hi, n_uniform)  # the top: the least pruning in range
        uniform = ctx.budget.project(np.zeros((n_uniform, len(ctx.space.groups))), levels=levels)
        others = raw_design(ctx)[1: 1 + ctx.n_init - n_uniform]  # the guided point, then Sobol points
        sobol = torch.quasirandom.SobolEngine(1, scramble=True, seed=ctx.seed + 1).draw(len(others)).numpy()[:, 0]
        return np.vstack([uniform, ctx.budget.project(others, levels=lo + (hi - lo) * sobol)])

    def features(self, rates: np.ndarray) -> np.ndarray:
        """hdbo's inputs plus the cost scaled to the range: one input that explains most of mAP's trend, so the GP
        learns early where on the cost axis the model collapses."""
        lo, hi = self.ctx.budget.cost_range()
        cost = (self.ctx.budget.cost(rates) - lo) / max(hi - lo, 1e-12)
        return np.hstack([super().features(rates), np.clip(cost, 0.0, 1.0)[:, None]])

    def propose(self, rates: np.ndarray, scores: np.ndarray, t: int,
                pending: np.ndarray | None = None) -> tuple[np.ndarray, str]:
        if t < len(self.init):
            return self.init[t], UNIFORM_PHASE if t < uniform_count(self.ctx) else "init"
        return self.next(rates, scores, t, pending), self.name

    def acquire(self, rates: np.ndarray, scores: np.ndarray, trial: int, pending: np.ndarray | None) -> np.ndarray:
        budget = self.ctx.budget
        rng = np.random.default_rng([self.ctx.seed, trial])
        lo, hi = budget.cost_range()
        costs, values = budget.cost(rates), np.asarray(scores, float)
        trend = self.uniform_curve(costs, values, rates)
        residual = torch.tensor(values - trend(costs), dtype=torch.double)[:, None]
        model = self._seeded_fit(torch.tensor(self.features(rates), dtype=torch.double), residual, trial, None)
        if pending is not None and len(pending):  # believe the pending points at their posterior means
            with torch.no_grad():
                mean = model.posterior(torch.tensor(self.features(pending), dtype=torch.double)).mean[:, 0].numpy()
            pending_costs = budget.cost(pending)
            costs = np.concatenate([costs, pending_costs])
            values = np.concatenate([values, trend(pending_costs) + mean])
        front = non_dominated(costs, values)
        raw, levels = self.front_candidates(rates, scores, costs, front, lo, hi, rng)
        cand = unseen(budget.project(raw, levels=levels), rates, pending)
        edges, steps_ = steps(costs[front], values[front], hi, REF_SHARE * float(values.max()))
        cand_costs = budget.cost(cand)
        gain = log_ehvi(model, torch.tensor(self.features(cand), dtype=torch.double), cand_costs, trend(cand_costs),
                        edges, steps_)
        return cand[int(gain.argmax())]

    def uniform_curve(self, costs: np.ndarray, scores: np.ndarray, rates: np.ndarray):
        """mAP of uniform rates as a function of cost, from the initial design's uniform trials (made monotone, flat
        beyond them): the GP models the gain over it, so where nothing was tried it expects what uniform rates
        give there, not the average of all trials."""
        uniform = np.array([tuple(np.round(r, 6)) in self._uniform for r in rates], bool)
        if not uniform.any():  # parallel workers: no uniform point back yet
            return lambda c: np.zeros(len(np.atleast_1d(c)))
        order = np.argsort(costs[uniform])
        xs, ys = costs[uniform][order], np.maximum.accumulate(scores[uniform][order])
        return lambda c: np.interp(c, xs, ys)

    def front_candidates(self, rates: np.ndarray, scores: np.ndarray, costs: np.ndarray, front: np.ndarray,
                         lo: float, hi: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Raw rates and their levels: sparse perturbations of front points near their own cost, and points of the box
        at levels spread over the range (`costs` and `front` may count pending points after `rates`)."""
        g, m = rates.shape[1], self.ctx.budget.max_rate
        n_local = int(LOCAL_SHARE * FRONT_CANDIDATES)
        n_box = FRONT_CANDIDATES - n_local
        own = front[front < len(rates)]  # a pending point has no result yet: perturb finished ones
        own = own if len(own) else np.array([int(np.argmax(scores))])
        pick = rng.integers(0, len(own), n_local)
        local = perturb(rates[own[pick]], 0.2, m, rng)
        local_levels = np.clip(costs[own[pick]] + rng.normal(0.0, LOCAL_SPREAD * (hi - lo), n_local), lo, hi)
        box = rng.random((n_box, g)) * m
        return np.vstack([local, box]), np.concatenate([local_levels, lo + (hi - lo) * rng.random(n_box)])



class ScanFront(Strategy):
    """The front from one sensitivity scan (`--pareto flops --strategy sensitivity`): each block of groups scored
    alone at LEVELS of the maximum rate, a few uniform-rate points (the curve the front is drawn against), then the
    scan's allocation (sensitivity.py) at evenly spread levels of the cost range, one trial each. Where hdbo's
    front spreads its trials' climbing over the whole axis, the scan's loss curves serve every level at once.
    Deterministic: the seed changes nothing."""

    name = "sensitivity"
    min_allocations = 4

    @classmethod
    def shares(cls, trials: int) -> tuple[int, int]:
        """(uniform points, trials at most for the scan) of a front of `trials` trials; the rest are allocations."""
        uniform = max(2, trials // 15)
        return uniform, trials - uniform - max(cls.min_allocations, trials // 4)

    @classmethod
    def scan_blocks(cls, trials: int, n_groups: int) -> int:
        return scan_size(n_groups, cls.shares(trials)[1], len(LEVELS))

    @classmethod
    def evaluations(cls, trials: int, n_groups: int) -> int:
        if cls.scan_blocks(trials, n_groups) < 1:
            raise UserError(f"--pareto with --strategy {cls.name} needs --trials >= 10 (a scan of one block, two "
                            f"uniform points, {cls.min_allocations} allocations), got {trials}")
        return trials

    def design(self, ctx: SearchContext) -> np.ndarray:
        uniform, scan = self.shares(ctx.trials)
        self.plan = plan_scan(ctx.budget, scan)
        lo, hi = ctx.budget.cost_range()
        bounded = ctx.budget.target is not None or ctx.budget.max_latency_ms is not None
        # unbounded, the top of the range is the unpruned model: the scan's first point already
        self.levels = spread_levels(lo, hi, ctx.trials - uniform - len(self.plan.points), top=bounded)
        points = ctx.budget.project(np.zeros((uniform, len(ctx.space.groups))),
                                    levels=spread_levels(lo, hi, uniform, top=bounded))
        return np.vstack([self.plan.points, points])

    def propose(self, rates: np.ndarray, scores: np.ndarray, t: int,
                pending: np.ndarray | None = None) -> tuple[np.ndarray, str]:
        if t < len(self.init):
            return self.init[t], SCAN_PHASE if t < len(self.plan.points) else UNIFORM_PHASE
        return self.next(rates, scores, t, pending), self.name

    def next(self, rates: np.ndarray, scores: np.ndarray, t: int, pending: np.ndarray | None) -> np.ndarray:
        return allocate(self.ctx.budget, self.plan, scan_scores(self.plan, rates, scores),
                        level=float(self.levels[t - len(self.init)]))


# a front run recorded before `auto` chose between the two (its meta says "auto") ran hdbo: it resumes as such
FRONT_STRATEGIES: dict[str, type[Strategy]] = {HDBO.name: ParetoHDBO, ScanFront.name: ScanFront,
                                               AUTO_STRATEGY: ParetoHDBO}


def auto_front_strategy(trials: int, n_groups: int) -> str:
    """`--strategy auto` for a front (FLOPs or latency): the scan when `trials` afford the scan `auto` asks of a
    single search (strategies.auto_strategy) besides the allocations, else hdbo's EHVI. Measured on the default
    model at 60 trials: the scan front's picks lead one hdbo search per budget on both axes."""
    fine_enough = ScanFront.scan_blocks(trials, n_groups) >= min(n_groups, AUTO_SCAN_BLOCKS)
    return ScanFront.name if fine_enough else HDBO.name


def front_summary(trials: list[dict], budget, space) -> dict:
    """front.json: the non-dominated trials (a scan front's probes only within the range's bounds) with their
    rates, mAP and costs (latency by the final estimate), the uniform-rate trials beside them, and the
    hypervolume up to the range's upper end."""
    inside = budget.feasible(np.array([space.rates_vector(t["rates"]) for t in trials]))
    trials = [t for t, ok in zip(trials, inside) if ok or t["phase"] != SCAN_PHASE]
    rates = np.array([space.rates_vector(t["rates"]) for t in trials])
    costs, scores = budget.cost(rates), np.array([t["score"] for t in trials], float)
    latency = budget.latency.predict(space, rates) if budget.latency else [None] * len(trials)
    ref = budget.cost_range()[1]

    def point(i: int) -> dict:
        t = trials[i]
        return {"trial": t["trial"], "phase": t["phase"], "cost": float(costs[i]), "score": t["score"],
                "map50_95": t["map50_95"], "map50": t["map50"], "flops_ratio": t["flops_ratio"],
                "latency_ms_est": None if latency[i] is None else float(latency[i]),
                "latency_ms_measured": t.get("latency_ms_measured"), "rates": t["rates"]}

    uniform = sorted((i for i, t in enumerate(trials) if t["phase"] == UNIFORM_PHASE), key=lambda i: costs[i])
    return {"front": budget.front,
            "cost_unit": "fraction of FLOPs kept" if budget.front == "flops" else
            f"ms, ONNX Runtime at {budget.latency.threads} thread(s), estimated",
            "reference": {"cost": ref, "score": 0.0}, "hypervolume": hypervolume(costs, scores, ref),
            "points": [point(i) for i in non_dominated(costs, scores)],
            "uniform": [{"trial": trials[i]["trial"], "cost": float(costs[i]), "score": trials[i]["score"]}
                        for i in uniform]}
