"""Where trials are evaluated: in the search process, or on Ray workers (`--workers N`).

`LocalPool` scores one candidate at a time in this process and never imports Ray. `RayPool`
runs N `TrialWorker` actors; each loads the base model and letterboxes the search slice and
calibration images once, then prunes, recalibrates and scores the candidates it is sent. The
search loop (loop.py) is the same for both: it submits while a worker is idle, proposing
each candidate given the ones still in flight, and records results in the order they finish.
A worker that dies is replaced and its candidate resubmitted under the same trial id, up to
MAX_TRIAL_RETRIES times; then the trial fails with its reason (scored 0).

Without `--ray-address` the run starts a private local Ray instance (never the cluster that
RAY_ADDRESS names) and shuts it down at the end; with it, the run joins that cluster, whose
nodes must see the weights and data at the same paths (a shared file system).
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import time
from dataclasses import dataclass, replace

from yoloprune.errors import UserError

CONNECT_TIMEOUT_S = 3.0
MAX_TRIAL_RETRIES = 2  # a candidate that kills its worker more often than this fails with its reason


@dataclass
class ScorerSpec:
    """What a worker needs to rebuild the search's candidate scorer."""

    weights: str
    data: str
    imgsz: int
    round_to: int
    criterion: str | dict  # one criterion, or {group: criterion}
    val_images: int
    calib_images: int
    recalibrate: bool
    score: str
    slice_seed: int | None = None
    device: str = "cpu"  # "cuda" on a Ray worker given GPUs (Ray sets CUDA_VISIBLE_DEVICES for it), else --device


class CandidateScorer:
    """Prunes a candidate of the base model and scores it with the trial evaluator (built once)."""

    def __init__(self, spec: ScorerSpec, loaded=None, space=None, evaluator=None) -> None:
        from yoloprune.checkpoint import load
        from yoloprune.evaluation.evaluator import TrialEvaluator
        from yoloprune.structure.groups import analyse
        from yoloprune.structure.importance import unit_scores

        self.device = spec.device
        self.loaded = loaded or load(spec.weights, spec.imgsz)
        self.space = space or analyse(self.loaded.model, self.loaded.imgsz, spec.round_to)
        self.unit_scores = unit_scores(self.space, spec.criterion)
        self.evaluator = evaluator or TrialEvaluator(
            spec.data, self.loaded.model.names, self.loaded.imgsz, spec.val_images, spec.calib_images,
            recalibrate=spec.recalibrate, score=spec.score, reference=self.loaded.model, slice_seed=spec.slice_seed,
            device=spec.device)

    def __call__(self, rates: dict[str, float]) -> dict:
        from yoloprune.structure.pruner import prune, removed_units

        pruned = prune(self.loaded.model, self.space, rates,
                       removed=removed_units(self.space, rates, scores=self.unit_scores)).to(self.device)
        r = self.evaluator.score(pruned)
        return {"params": int(sum(p.numel() for p in pruned.parameters())), "score": r.score,
                "map50_95": r.map50_95, "map50": r.map50, "eval_seconds": r.seconds}


class LocalPool:
    """One candidate at a time, in this process."""

    workers = 1

    def __init__(self, scorer: CandidateScorer, threads: int | None = None) -> None:
        self.scorer, self.threads = scorer, threads
        self.queue: list[tuple[int, dict]] = []

    def idle(self) -> bool:
        return not self.queue

    def in_flight(self) -> list[dict]:
        return []  # a candidate is scored before the next is proposed

    def submit(self, trial: int, rates: dict[str, float]) -> None:
        self.queue.append((trial, rates))

    def next_result(self) -> tuple[int, dict]:
        from yoloprune.threads import torch_threads

        trial, rates = self.queue.pop(0)
        with torch_threads(self.threads):
            return trial, self.scorer(rates)

    def close(self) -> None:
        pass


def check_parallel(workers: int, worker_cpus: int | None, worker_gpus: float, address: str | None) -> None:
    """Bad parallel settings fail here, before anything is written: counts, Ray missing, an unreachable cluster."""
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if worker_cpus is not None and worker_cpus < 1:
        raise UserError(f"--worker-cpus must be >= 1, got {worker_cpus}")
    if worker_gpus < 0:
        raise UserError(f"--worker-gpus must be >= 0, got {worker_gpus}")
    if workers == 1:
        if address is not None:
            raise UserError("--ray-address needs --workers > 1 (one worker runs in this process)")
        if worker_cpus is not None and worker_cpus > (os.cpu_count() or 1):
            raise UserError(f"--worker-cpus {worker_cpus} exceeds the {os.cpu_count()} visible cores")
        return
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UserError("--workers > 1 runs trials on Ray, which is not installed: pip install 'yoloprune[ray]'"
                        ) from None
    if address is None:
        cores = os.cpu_count() or 1
        if workers * (worker_cpus or 1) > cores:
            raise UserError(f"--workers {workers} x --worker-cpus {worker_cpus or 1} would oversubscribe the {cores} "
                            f"visible cores")
    else:
        host, port = parse_address(address)
        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as e:
            raise UserError(f"cannot reach a Ray cluster at {address} ({e.strerror or e}); start one with "
                            f"`ray start --head` or check the address") from None


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray-address must be HOST:PORT (the head's GCS port, 6379 by default), got {address}")
    return host, int(port)


def failed_result(reason: str) -> dict:
    """The record of a trial that could not be scored: the worst score, so the search learns to avoid it."""
    return {"params": None, "score": 0.0, "map50_95": 0.0, "map50": 0.0, "eval_seconds": 0.0, "failed": reason}


class RayPool:
    """N TrialWorker actors on a private local Ray instance or on the cluster at `address`."""

    def __init__(self, spec: ScorerSpec, workers: int, worker_cpus: int | None, worker_gpus: float,
                 address: str | None, log=None) -> None:
        import ray

        self.ray, self.log = ray, log
        self.spec = replace(spec, device="cuda" if worker_gpus > 0 else "cpu")
        self.cpus = worker_cpus or max(1, (os.cpu_count() or 1) // workers)
        self.gpus = worker_gpus
        # Ray's driver threads print worker deaths to sys.stdout: send them to stderr (--json keeps stdout clean)
        self.stdout, sys.stdout = sys.stdout, sys.stderr
        env = os.environ.pop("RAY_ADDRESS", None)  # a private instance must not join whatever this names
        if address is None:  # Ray >= 2.59 secures a local instance with a token; keep it in the run, not in ~/.ray
            os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
        try:
            ray.init(address=address or "local", num_cpus=None if address else os.cpu_count(),
                     include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=True,
                     namespace="yoloprune")
        except Exception as e:  # noqa: BLE001  Ray raises many types (auth, version mismatch, timeouts)
            sys.stdout = self.stdout
            where = f"join the Ray cluster at {address}" if address else "start a local Ray instance"
            raise UserError(f"could not {where}: {str(e).strip().splitlines()[0][:300]}") from None
        finally:
            if env is not None:
                os.environ["RAY_ADDRESS"] = env
        self.actor_class = ray.remote(TrialWorker)
        self.actors = [self._start() for _ in range(workers)]
        self.workers = workers
        self.busy: dict = {}  # object ref -> (actor index, trial id, rates)
        self.replaced = 0
        self.deaths: dict[int, int] = {}  # trial id -> workers it has killed

    def _start(self):
        return self.actor_class.options(num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=0).remote(
            self.spec, self.cpus)

    def idle(self) -> bool:
        return len(self.busy) < len(self.actors)

    def in_flight(self) -> list[dict]:
        return [rates for _, _, rates in self.busy.values()]

    def submit(self, trial: int, rates: dict[str, float]) -> None:
        taken = {i for i, _, _ in self.busy.values()}
        i = next(k for k in range(len(self.actors)) if k not in taken)
        self.busy[self.actors[i].score.remote(rates)] = (i, trial, rates)

    def next_result(self) -> tuple[int, dict]:
        while True:
            done, _ = self.ray.wait(list(self.busy), num_returns=1)
            i, trial, rates = self.busy.pop(done[0])
            try:
                return trial, self.ray.get(done[0])
            except self.ray.exceptions.RayActorError as e:  # its process was killed or its node lost
                self.replaced += 1
                self.deaths[trial] = self.deaths.get(trial, 0) + 1
                self.actors[i] = self._start()
                if self.deaths[trial] > MAX_TRIAL_RETRIES:
                    reason = f"killed its worker {self.deaths[trial]} times ({str(e).strip().splitlines()[0][:200]})"
                    if self.log:
                        self.log(f"trial {trial} {reason}: failed, scored 0")
                    return trial, failed_result(reason)
                if self.log:
                    self.log(f"worker {i} died during trial {trial}: restarting it and resubmitting the trial")
                self.busy[self.actors[i].score.remote(rates)] = (i, trial, rates)

    def close(self) -> None:
        try:
            self.ray.shutdown()
        finally:
            sys.stdout = self.stdout


class TrialWorker:
    """A Ray actor (wrapped by RayPool): one CandidateScorer, torch limited to its CPU share."""

    def __init__(self, spec: ScorerSpec, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.scorer = CandidateScorer(spec)

    def score(self, rates: dict[str, float]) -> dict:
        t0 = time.perf_counter()
        result = self.scorer(rates)
        result["worker_pid"], result["worker_seconds"] = os.getpid(), time.perf_counter() - t0
        return result
