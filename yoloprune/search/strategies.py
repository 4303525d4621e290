"""Search strategies: what rates to try next, given every trial so far (plug-ins of the search loop).

Every strategy, the baselines included, is a `Strategy`: `propose(rates, scores, t, pending)`
returns trial t's rates and its phase label; `evaluations(trials, groups)` says how many trials
it takes (one for the deterministic baselines, whatever --trials asks). Scan trials (phase
`scan`, the sensitivity strategies' probes of one group at a time) lie off the budget: they
inform the strategy but are never a single search's result (a front search keeps them as points).

Every strategy returns rates already projected onto the FLOPs budget (budget.py), so the
models only ever see realised, feasible points. The Bayesian ones are BoTorch end to end:
a GP fitted by marginal likelihood and LogEI maximised over a candidate set of projected
points (trust-region perturbations of the incumbent plus Sobol points), which respects the
budget exactly.

- uniform: one rate for every group (deterministic, one trial)
- global:  one importance threshold across all groups (deterministic, one trial)
- random:  the shared initial design, then Sobol points
- hdbo:    GP with BoTorch's dimension-scaled lengthscale prior over all groups, TuRBO-style trust region
- saas:    the same loop with a MAP-SAAS ensemble GP (sparse axis-aligned subspaces), refit every few trials
- bocr:    BO over group clusters first, then rolled back to all groups within bounds from the best trials
- sensitivity: the peers' method: a scan of each group alone, then rates at equal marginal loss per FLOP
- hdbo-warm: hdbo whose initial design is a coarse sensitivity scan and its allocation (its GP sees the scan)
- auto (the default): sensitivity when the trials afford a fine enough scan of a FLOPs budget, else hdbo
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from yoloprune.errors import UserError
from yoloprune.search.budget import Budget
from yoloprune.search.sensitivity import LEVELS, ScanPlan, allocate, plan_scan, scan_report, scan_scores, scan_size
from yoloprune.structure.space import PruneSpace
from yoloprune.threads import torch_threads

# L-BFGS iterations per GP fit: uncapped, a fit at 95 trials x 50 groups ran 2400 evaluations (5 s); capped
# at 100 it takes 0.27 s and moves the marginal log likelihood by 0.2 and posterior means by < 0.002.
GP_FIT_MAXITER = 100
N_CANDIDATES = 1024
SCAN_PHASE = "scan"


def on_budget(trials: list[dict]) -> list[dict]:
    """The trials that are search results: all but the scan's off-budget probes."""
    return [t for t in trials if t["phase"] != SCAN_PHASE]


@dataclass
class SearchContext:
    """What a strategy may look at."""

    space: PruneSpace
    budget: Budget
    unit_scores: dict[int, float]
    seed: int
    trials: int
    n_init: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_init = max(3, min(20, self.trials // 5))


def initial_design(ctx: SearchContext) -> np.ndarray:
    """Uniform point, importance-guided point, then scrambled Sobol points; all projected."""
    return ctx.budget.project(raw_design(ctx))


def raw_design(ctx: SearchContext) -> np.ndarray:
    """The initial design's n_init points before projection."""
    g = len(ctx.space.groups)
    guided = _guided_point(ctx)
    sobol = torch.quasirandom.SobolEngine(g, scramble=True, seed=ctx.seed).draw(max(ctx.n_init - 2, 0))
    raw = np.vstack([np.zeros((1, g)), guided[None], sobol.double().numpy() * ctx.budget.max_rate])
    return raw[: ctx.n_init]


def _guided_point(ctx: SearchContext) -> np.ndarray:
    """Rates that cut groups with cheap, weak channels harder: FLOPs per channel over importance."""
    space = ctx.space
    cost = np.array([g.flops_share / g.channels for g in space.groups])
    weak = np.array([1.0 / max(np.mean([ctx.unit_scores.get(int(r), 1.0) for p in g.parts for r in p]), 1e-6)
                     for g in space.groups])
    score = cost * weak
    rank = score.argsort().argsort() / max(len(score) - 1, 1)
    return rank * ctx.budget.max_rate


def global_threshold_rates(ctx: SearchContext) -> np.ndarray:
    """Rates from one importance threshold across groups (each group's minimum respected)."""
    space = ctx.space
    per_group = [np.sort([ctx.unit_scores.get(int(r), 0.0) for r in g.parts[0]]) for g in space.groups]

    def rates_at(tau: float) -> np.ndarray:
        r = np.array([np.searchsorted(s, tau) / len(s) for s in per_group])
        return np.minimum(r, ctx.budget.max_rate)[None]

    lo, hi = 0.0, max(float(s[-1]) for s in per_group) + 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if ctx.budget.feasible(space.realised_rates(rates_at(mid)))[0]:
            hi = mid
        else:
            lo = mid
    return space.realised_rates(rates_at(hi))


class Strategy:
    """Proposes trial t's rates (projected onto the budget) from the finished trials' rates and scores; the
    initial design first, then `next`."""

    name = ""
    deterministic = False  # one evaluation, whatever --trials says
    plan: ScanPlan | None = None  # the sensitivity scan among the initial points, if any

    def __init__(self, ctx: SearchContext) -> None:
        self.ctx = ctx
        self.init = self.design(ctx)
        self._scan = set() if self.plan is None else {tuple(np.round(p, 6)) for p in self.plan.points}

    @staticmethod
    def design(ctx: SearchContext) -> np.ndarray:
        """The points proposed before the strategy's own rule (all of them, for a deterministic strategy)."""
        return initial_design(ctx)

    @classmethod
    def evaluations(cls, trials: int, n_groups: int) -> int:
        """How many trials a run of this strategy takes when --trials asks for `trials`."""
        return 1 if cls.deterministic else trials

    @property
    def n_init(self) -> int:
        return len(self.init)

    def ready(self, t: int, in_flight: int) -> bool:
        """Whether trial t can be proposed while `in_flight` trials are still running (the allocation after a
        scan needs every scan score)."""
        return self.plan is None or t != len(self.init) or in_flight == 0

    def searched(self, rates: np.ndarray) -> np.ndarray:
        """Which rows of finished trials' rates (N, G) are search results (not scan probes)."""
        return np.array([tuple(np.round(r, 6)) not in self._scan for r in rates], bool)

    def propose(self, rates: np.ndarray, scores: np.ndarray, t: int,
                pending: np.ndarray | None = None) -> tuple[np.ndarray, str]:
        """(rates (G,), phase) of trial t; `rates` (N, G) and `scores` (N,) are the finished trials, `pending`
        (P, G) the candidates still being evaluated by parallel workers."""
        if self.plan is not None and t < len(self.plan.points):
            return self.init[t], SCAN_PHASE
        if t < len(self.init):
            return self.init[t], self.name if self.deterministic else "init"
        return self.next(rates, scores, t, pending), self.name

    def report(self, rates: np.ndarray, scores: np.ndarray, names: list[str]) -> dict | None:
        """The scan's scores by group and rate (sensitivity.json), for strategies that scan."""
        found = None if self.plan is None else scan_scores(self.plan, rates, scores)
        return None if found is None else scan_report(self.plan, names, found)

    def allocation(self, rates: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """The scan's allocation on the budget (every scan point must be scored)."""
        return allocate(self.ctx.budget, self.plan, scan_scores(self.plan, rates, scores))

    def next(self, rates: np.ndarray, scores: np.ndarray, t: int, pending: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError


class Uniform(Strategy):
    """One rate for every group, shifted onto the budget."""

    name, deterministic = "uniform", True

    @staticmethod
    def design(ctx: SearchContext) -> np.ndarray:
        return ctx.budget.project(np.zeros((1, len(ctx.space.groups))))


class GlobalThreshold(Strategy):
    """One importance threshold across all groups (each group's minimum respected)."""

    name, deterministic = "global", True

    @staticmethod
    def design(ctx: SearchContext) -> np.ndarray:
        return global_threshold_rates(ctx)


class RandomSearch(Strategy):
    """The shared initial design, then uniform random points over the box, projected."""

    name = "random"

    def next(self, rates: np.ndarray, scores: np.ndarray, t: int, pending: np.ndarray | None) -> np.ndarray:
        rng = np.random.default_rng([self.ctx.seed, t])
        return self.ctx.budget.project(rng.random((1, len(self.ctx.space.groups))) * self.ctx.budget.max_rate)[0]


# -- Bayesian optimisation ---------------------------------------------------------------------
def _fit_gp(x: torch.Tensor, y: torch.Tensor, kind: str, state: dict | None = None):
    """A BoTorch GP on inputs in [0, 1]^d; fitted by marginal likelihood unless `state` is reused."""
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.map_saas import EnsembleMapSaasSingleTaskGP
    from gpytorch.mlls import ExactMarginalLogLikelihood

    model = EnsembleMapSaasSingleTaskGP(x, y) if kind == "saas" else SingleTaskGP(x, y)
    if state is not None:  # reuse kernel hyperparameters; the output scaling belongs to the new data
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith("outcome_transform.")},
                              strict=False)
    else:
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model),
                         optimizer_kwargs={"options": {"maxiter": GP_FIT_MAXITER}})
    return model


class BayesianStrategy(Strategy):
    """GP + LogEI over projected candidates; subclasses choose the input features and candidates."""

    kind = "gp"
    refit_every = 1
    trust_region = True  # half the candidates perturb the incumbent (benchmarks/search_quality.py ablates it)

    def __init__(self, ctx: SearchContext) -> None:
        super().__init__(ctx)
        self._state: dict | None = None
        self._fits = 0

    def ready(self, t: int, in_flight: int) -> bool:
        """The GP needs results: with more workers than initial points, the first BO trial waits for two."""
        return super().ready(t, in_flight) and (t < self.n_init or t - in_flight >= min(2, self.n_init))

    def incumbent(self, rates: np.ndarray, scores: np.ndarray) -> int:
        """Row of the best search result so far (of any trial, should none be a search result yet)."""
        searched = self.searched(rates)
        return int(np.argmax(np.where(searched, scores, -np.inf) if searched.any() else scores))

    def _seeded_fit(self, x, y, trial: int, state: dict | None):
        return _fit_seeded(self.ctx, x, y, self.kind, trial, state)

    def features(self, rates: np.ndarray) -> np.ndarray:
        """GP inputs in [0, 1] for realised rates (B, G); minimum keep counts can push a rate past max_rate."""
        return np.minimum(rates / self.ctx.budget.max_rate, 1.0)

    def candidates(self, rates: np.ndarray, scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Raw (unprojected) candidate rates around the incumbent and across the box."""
        g = rates.shape[1]
        m = self.ctx.budget.max_rate
        if not self.trust_region:
            return rng.random((N_CANDIDATES, g)) * m
        best = rates[self.incumbent(rates, scores)]
        local = perturb(np.repeat(best[None], N_CANDIDATES // 2, 0), trust_region_length(scores[self.n_init:], g), m,
                        rng)
        box = rng.random((N_CANDIDATES // 2, g)) * m
        return np.vstack([local, box])

    def next(self, rates: np.ndarray, scores: np.ndarray, t: int, pending: np.ndarray | None) -> np.ndarray:
        with torch_threads(1):  # BO in one thread: oversubscription, not the GP, is what makes it slow
            return self.acquire(rates, scores, t, pending)

    def acquire(self, rates: np.ndarray, scores: np.ndarray, trial: int, pending: np.ndarray | None) -> np.ndarray:
        """The rates (G,) maximising LogEI; with `pending` points in flight, Monte Carlo LogEI over the joint of
        the candidate and the pending points."""
        from botorch.acquisition.analytic import LogExpectedImprovement
        from botorch.acquisition.logei import qLogExpectedImprovement

        rng = np.random.default_rng([self.ctx.seed, trial])
        x = torch.tensor(self.features(rates), dtype=torch.double)
        y = torch.tensor(scores, dtype=torch.double)[:, None]
        last_fit = trial - (trial - self.n_init) % self.refit_every
        if self._state is None and last_fit < trial:  # resumed between refits: redo the last fit exactly
            self._state = self._seeded_fit(x[:last_fit], y[:last_fit], last_fit, None).state_dict()
        model = self._seeded_fit(x, y, trial, None if last_fit == trial else self._state)
        self._state = model.state_dict()
        cand = self.ctx.budget.project(self.candidates(rates, scores, rng))
        cand = unseen(cand, rates, pending)
        best_f = y[self.incumbent(rates, scores)]
        if pending is None or not len(pending):
            acq = LogExpectedImprovement(model, best_f=best_f)
        else:
            acq = qLogExpectedImprovement(model, best_f=best_f,
                                          X_pending=torch.tensor(self.features(pending), dtype=torch.double))
        with torch.no_grad():
            values = acq(torch.tensor(self.features(cand), dtype=torch.double)[:, None, :])
        return cand[int(values.argmax())]


def perturb(centres: np.ndarray, length: float, max_rate: float, rng: np.random.Generator) -> np.ndarray:
    """Sparse moves of each row of `centres` (n, G): about 20 groups (at least one) each move by up to
    +-length x max_rate, clipped to the box."""
    n, g = centres.shape
    mask = rng.random((n, g)) < min(1.0, 20.0 / g)
    mask[np.arange(n), rng.integers(0, g, n)] = True
    return np.clip(centres + mask * rng.uniform(-length, length, (n, g)) * max_rate, 0.0, max_rate)


def unseen(cand: np.ndarray, rates: np.ndarray, pending: np.ndarray | None) -> np.ndarray:
    """The distinct candidates (rounded to 1e-6) not already finished or in flight; all of them if none is new."""
    cand = np.unique(np.round(cand, 6), axis=0)
    busy = rates if pending is None or not len(pending) else np.vstack([rates, pending])
    seen = {tuple(np.round(r, 6)) for r in busy}
    fresh = np.array([c for c in cand if tuple(c) not in seen]) if len(cand) else cand
    return fresh if len(fresh) else cand


def _fit_seeded(ctx: SearchContext, x, y, kind: str, trial: int, state: dict | None):
    """_fit_gp with torch's generator seeded by (seed, trial): same run, same models, resumed or not."""
    with torch.random.fork_rng():
        torch.manual_seed(ctx.seed * 100003 + trial)
        return _fit_gp(x, y, kind, state)


def trust_region_length(scores: np.ndarray, dim: int, start: float = 0.4, lo: float = 0.02,
                        hi: float = 0.8, success_tol: int = 3, failure_tol: int = 5) -> float:
    """TuRBO's side length after replaying the BO trials' successes and failures (0 trials: `start`)."""
    length, best, succ, fail = start, -math.inf, 0, 0
    for s in scores:
        improved = best == -math.inf or s > best + 1e-3 * abs(best)
        if improved:
            succ, fail, best = succ + 1, 0, s
        else:
            succ, fail = 0, fail + 1
        if succ >= success_tol:
            length, succ = min(2 * length, hi), 0
        elif fail >= failure_tol:
            length, fail = length / 2, 0
            if length < lo:
                length = start
    return length


class HDBO(BayesianStrategy):
    """Vanilla high-dimensional BO (dimension-scaled lengthscale prior) with a trust region."""

    name = "hdbo"


class SAAS(BayesianStrategy):
    """MAP-SAAS ensemble GP: most groups are assumed irrelevant unless the data say otherwise."""

    name, kind = "saas", "saas"
    refit_every = 5


class BOCR(BayesianStrategy):
    """BO over clusters of similar groups for the first half of the BO trials, then all groups."""

    name = "bocr"
    n_clusters = 8

    def __init__(self, ctx: SearchContext) -> None:
        super().__init__(ctx)
        self.cluster = cluster_groups(ctx, min(self.n_clusters, len(ctx.space.groups)))
        self.rollback_at = ctx.n_init + (ctx.trials - ctx.n_init) // 2
        self.full = False

    def features(self, rates: np.ndarray) -> np.ndarray:
        if self.full:
            return super().features(rates)
        k = self.cluster.max() + 1
        means = np.stack([rates[:, self.cluster == c].mean(1) for c in range(k)], 1)
        return np.minimum(means / self.ctx.budget.max_rate, 1.0)

    def candidates(self, rates: np.ndarray, scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        m = self.ctx.budget.max_rate
        if not self.full:
            k = self.cluster.max() + 1
            z = rng.random((N_CANDIDATES, k)) * m
            best = self.features(rates[[int(np.argmax(scores))]])[0] * m
            z[: N_CANDIDATES // 2] = np.clip(best + rng.normal(0, 0.1 * m, (N_CANDIDATES // 2, k)), 0, m)
            return z[:, self.cluster]
        top = rates[np.argsort(scores)[-5:]]
        lo = np.clip(top.min(0) - 0.1 * m, 0, m)
        hi = np.clip(top.max(0) + 0.1 * m, 0, m)
        box = lo + rng.random((N_CANDIDATES, rates.shape[1])) * (hi - lo)
        local = super().candidates(rates, scores, rng)[: N_CANDIDATES // 2]
        return np.vstack([np.clip(local, lo, hi), box[: N_CANDIDATES // 2]])

    def acquire(self, rates: np.ndarray, scores: np.ndarray, trial: int, pending: np.ndarray | None) -> np.ndarray:
        if not self.full and trial >= self.rollback_at:
            self.full, self._state = True, None
        return super().acquire(rates, scores, trial, pending)


def cluster_groups(ctx: SearchContext, k: int) -> np.ndarray:
    """k-means cluster of each group by structure (depth, width, FLOPs) and importance spread."""
    from scipy.cluster.vq import kmeans2, whiten

    space = ctx.space
    feats = []
    for i, g in enumerate(space.groups):
        s = np.array([ctx.unit_scores.get(int(r), 1.0) for p in g.parts for r in p])
        feats.append([i / len(space.groups), math.log(g.channels), g.flops_share, s.std(), (s < 0.5).mean()])
    f = whiten(np.array(feats) + 1e-9)
    _, labels = kmeans2(f, k, seed=np.random.default_rng(ctx.seed), minit="++")
    _, labels = np.unique(labels, return_inverse=True)  # drop empty clusters
    return labels


# -- per-group sensitivity (sensitivity.py) --------------------------------------------------------
class Sensitivity(Strategy):
    """The peers' method: each group (or block of groups, when --trials is short) scored alone at LEVELS of the
    maximum rate, then one trial of the allocation at equal marginal loss per FLOP."""

    name = "sensitivity"
    levels = LEVELS

    @classmethod
    def scan_blocks(cls, trials: int, n_groups: int) -> int:
        """Blocks of groups the scan of a run of `trials` trials takes (one trial is left for the allocation)."""
        return scan_size(n_groups, trials - 1, len(cls.levels))

    @classmethod
    def evaluations(cls, trials: int, n_groups: int) -> int:
        blocks = cls.scan_blocks(trials, n_groups)
        if blocks < 1:
            raise UserError(f"--strategy {cls.name} needs --trials >= {len(cls.levels) + 2} (the unpruned model, "
                            f"one block at {len(cls.levels)} rates, the allocation); a scan of every group alone "
                            f"takes {n_groups * len(cls.levels) + 2}")
        return 1 + blocks * len(cls.levels) + 1

    def design(self, ctx: SearchContext) -> np.ndarray:
        self.plan = plan_scan(ctx.budget, ctx.trials - 1, self.levels)
        return self.plan.points

    def next(self, rates: np.ndarray, scores: np.ndarray, t: int, pending: np.ndarray | None) -> np.ndarray:
        return self.allocation(rates, scores)


class WarmHDBO(HDBO):
    """hdbo warm-started by a coarse scan: blocks of groups at half the maximum rate, then the uniform point
    and the scan's allocation; the GP is fitted on the scan too (its per-block curves act as a prior), while
    the incumbent and the improvement target are search results only."""

    name = "hdbo-warm"
    levels = (0.5,)
    min_trials = 8  # a scan of two blocks or more, the uniform point, the allocation and BO trials

    @classmethod
    def evaluations(cls, trials: int, n_groups: int) -> int:
        if trials < cls.min_trials:
            raise UserError(f"--strategy {cls.name} needs --trials >= {cls.min_trials}, got {trials}")
        return trials

    def design(self, ctx: SearchContext) -> np.ndarray:
        self.plan = plan_scan(ctx.budget, max(3, ctx.trials // 4), self.levels)
        return np.vstack([self.plan.points, ctx.budget.project(np.zeros((1, len(ctx.space.groups))))])

    def next(self, rates: np.ndarray, scores: np.ndarray, t: int, pending: np.ndarray | None) -> np.ndarray:
        return self.allocation(rates, scores) if t == self.n_init else super().next(rates, scores, t, pending)


STRATEGY_CLASSES: dict[str, type[Strategy]] = {
    s.name: s for s in (HDBO, BOCR, SAAS, RandomSearch, Uniform, GlobalThreshold, Sensitivity, WarmHDBO)}
STRATEGIES = tuple(STRATEGY_CLASSES)
AUTO_STRATEGY = "auto"
AUTO_SCAN_BLOCKS = 12  # the coarsest scan measured ahead of hdbo at equal evaluations (benchmarks/README.md)


def auto_strategy(trials: int, n_groups: int, flops_only: bool) -> str:
    """`--strategy auto`: the sensitivity scan for a FLOPs budget when `trials` afford a scan of at least
    AUTO_SCAN_BLOCKS blocks of groups (or of every group alone), else hdbo. Measured on the default model: at
    38-152 evaluations the scan led hdbo at 40/50/60% FLOPs; at 12 and 20 (3 and 6 blocks) hdbo led."""
    fine_enough = Sensitivity.scan_blocks(trials, n_groups) >= min(n_groups, AUTO_SCAN_BLOCKS)
    return Sensitivity.name if flops_only and fine_enough else HDBO.name

