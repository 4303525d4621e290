"""Search strategies: what rates to try next, given every trial so far (plug-ins of the search loop).

Every strategy, the baselines included, is a `Strategy`: `propose(rates, scores, t, pending)`
returns trial t's rates and its phase label; `evaluations(trials)` says how many trials it
takes (one for the deterministic baselines, whatever --trials asks).

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from yoloprune.search.budget import Budget
from yoloprune.structure.space import PruneSpace
from yoloprune.threads import torch_threads

# L-BFGS iterations per GP fit: uncapped, a fit at 95 trials x 50 groups ran 2400 evaluations (5 s); capped
# at 100 it takes 0.27 s and moves the marginal log likelihood by 0.2 and posterior means by < 0.002.
GP_FIT_MAXITER = 100
N_CANDIDATES = 1024


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
    g = len(ctx.space.groups)
    guided = _guided_point(ctx)
    sobol = torch.quasirandom.SobolEngine(g, scramble=True, seed=ctx.seed).draw(max(ctx.n_init - 2, 0))
    raw = np.vstack([np.zeros((1, g)), guided[None], sobol.double().numpy() * ctx.budget.max_rate])
    return ctx.budget.project(raw[: ctx.n_init])


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

    def __init__(self, ctx: SearchContext) -> None:
        self.ctx = ctx
        self.init = self.design(ctx)

    @staticmethod
    def design(ctx: SearchContext) -> np.ndarray:
        """The points proposed before the strategy's own rule (all of them, for a deterministic strategy)."""
        return initial_design(ctx)

    @classmethod
    def evaluations(cls, trials: int) -> int:
        """How many trials a run of this strategy takes when --trials asks for `trials`."""
        return 1 if cls.deterministic else trials

    @property
    def n_init(self) -> int:
        return len(self.init)

    def propose(self, rates: np.ndarray, scores: np.ndarray, t: int,
                pending: np.ndarray | None = None) -> tuple[np.ndarray, str]:
        """(rates (G,), phase) of trial t; `rates` (N, G) and `scores` (N,) are the finished trials, `pending`
        (P, G) the candidates still being evaluated by parallel workers."""
        if t < len(self.init):
            return self.init[t], self.name if self.deterministic else "init"
        return self.next(rates, scores, t, pending), self.name

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
        best = rates[int(np.argmax(scores))]
        length = trust_region_length(scores[self.ctx.n_init:], g)
        mask = rng.random((N_CANDIDATES // 2, g)) < min(1.0, 20.0 / g)
        mask[np.arange(len(mask)), rng.integers(0, g, len(mask))] = True
        local = best + mask * rng.uniform(-length, length, (len(mask), g)) * m
        box = rng.random((N_CANDIDATES // 2, g)) * m
        return np.clip(np.vstack([local, box]), 0.0, m)

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
        last_fit = trial - (trial - self.ctx.n_init) % self.refit_every
        if self._state is None and last_fit < trial:  # resumed between refits: redo the last fit exactly
            self._state = self._seeded_fit(x[:last_fit], y[:last_fit], last_fit, None).state_dict()
        model = self._seeded_fit(x, y, trial, None if last_fit == trial else self._state)
        self._state = model.state_dict()
        cand = self.ctx.budget.project(self.candidates(rates, scores, rng))
        cand = np.unique(np.round(cand, 6), axis=0)
        busy = rates if pending is None or not len(pending) else np.vstack([rates, pending])
        seen = {tuple(np.round(r, 6)) for r in busy}
        fresh = np.array([c for c in cand if tuple(c) not in seen]) if len(cand) else cand
        cand = fresh if len(fresh) else cand
        if pending is None or not len(pending):
            acq = LogExpectedImprovement(model, best_f=y.max())
        else:
            acq = qLogExpectedImprovement(model, best_f=y.max(),
                                          X_pending=torch.tensor(self.features(pending), dtype=torch.double))
        with torch.no_grad():
            values = acq(torch.tensor(self.features(cand), dtype=torch.double)[:, None, :])
        return cand[int(values.argmax())]


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


STRATEGY_CLASSES: dict[str, type[Strategy]] = {
    s.name: s for s in (HDBO, BOCR, SAAS, RandomSearch, Uniform, GlobalThreshold)}
STRATEGIES = tuple(STRATEGY_CLASSES)


def make_strategy(name: str, space: PruneSpace, budget: Budget, unit_scores: dict[int, float], seed: int,
                  trials: int) -> Strategy:
    """The strategy called `name` (one of STRATEGIES) for a run of `trials` requested trials."""
    cls = STRATEGY_CLASSES[name]
    return cls(SearchContext(space, budget, unit_scores, seed, cls.evaluations(trials)))
