"""Trials on Ray workers (--workers N): a private local instance, a worker killed mid-search, a real cluster."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest


def parallel_cmd(weights, data, project, *extra):
    return [sys.executable, "-m", "yoloprune", "search", "--weights", str(weights), "--data", str(data),
            "--target-flops", "0.6", "--val-images", "6", "--calib-images", "8", "--project", str(project),
            "--workers", "2", "--worker-cpus", "1", *extra]


def trial_ids(run):
    return [json.loads(line)["trial"] for line in (run / "trials.jsonl").read_text().splitlines()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("extra, fragment", [
    (["--workers", "0"], "--workers"),
    (["--workers", "2", "--worker-cpus", "64"], "oversubscribe"),
    (["--workers", "2", "--ray-address", "127.0.0.1:1"], "cannot reach"),
    (["--workers", "2", "--ray-address", "nohost"], "HOST:PORT"),
    (["--ray-address", "127.0.0.1:6379"], "--workers > 1"),
])
def test_parallel_bad_input(tmp_path, tiny_weights, tiny_data, extra, fragment):
    cmd = parallel_cmd(tiny_weights, tiny_data.yaml_path, tmp_path / "runs")[:-4] + extra
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr and fragment in out.stderr, out.stderr[-800:]
    assert len(out.stderr.strip().splitlines()) == 1 and time.time() - t0 < 60
    assert not (tmp_path / "runs").exists()


def test_ray_not_installed_is_one_clear_error(tmp_path, tiny_weights, tiny_data):
    argv = parallel_cmd(tiny_weights, tiny_data.yaml_path, tmp_path / "runs")[3:]
    code = f"import sys; sys.modules['ray'] = None; from yoloprune.cli import main; sys.exit(main({argv!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "pip install 'yoloprune[ray]'" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_killed_worker_is_replaced_and_no_trial_is_lost_or_repeated(tmp_path, tiny_weights, tiny_data):
    proc = subprocess.Popen(parallel_cmd(tiny_weights, tiny_data.yaml_path, tmp_path, "--trials", "10", "--name", "r",
                                         "--json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "r" / "trials.jsonl"

    def scored_by() -> set[int]:  # complete lines only: the search may be appending one
        lines = log.read_text().split("\n")[:-1] if log.exists() else []
        return {json.loads(line)["worker_pid"] for line in lines if line}

    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(scored_by()) < 2:
        time.sleep(0.2)  # kill a worker known to have scored, not one still starting
    assert len(scored_by()) == 2, "both workers must score before one is killed"
    victim = min(scored_by())
    workers = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)
               if "TrialWorker" in " ".join(p.cmdline())}
    assert victim in workers, "the worker that scored is not a Ray TrialWorker child"
    os.kill(victim, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-2000:]
    summary = json.loads(stdout)  # one JSON object: worker logs stay off stdout
    ids = trial_ids(tmp_path / "r")
    assert sorted(ids) == list(range(10)) and summary["trials"] == 10 and summary["workers"] == 2
    assert "died" in stderr
    assert len(scored_by()) >= 3  # the replacement scored the resubmitted trial


@pytest.mark.slow
def test_search_joins_a_running_cluster_and_writes_the_same_run_format(tmp_path, tiny_weights, tiny_data):
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(16).hex()}  # Ray >= 2.59: tokens
    temp = f"/tmp/ypr{os.getpid()}"  # Ray's socket paths need a short temp dir
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
                             "--include-dashboard=false", "--temp-dir", temp, "--disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        time.sleep(3)  # the GCS accepts connections a little before the raylet has registered
        out = subprocess.run(parallel_cmd(tiny_weights, tiny_data.yaml_path, tmp_path, "--trials", "5", "--name",
                                          "c", "--ray-address", f"127.0.0.1:{port}", "--json"),
                             capture_output=True, text=True, timeout=600, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        summary = json.loads(out.stdout)
        assert sorted(trial_ids(tmp_path / "c")) == list(range(5)) and summary["workers"] == 2
        for name in ("meta.json", "summary.json", "best_rates.yaml", "pruned.pt", "progress.png"):
            assert (tmp_path / "c" / name).exists(), name
        assert head.poll() is None, "the search must not stop the cluster it joined"
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        finally:
            try:
                os.killpg(head.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            shutil.rmtree(temp, ignore_errors=True)


def test_a_candidate_that_keeps_killing_its_worker_fails_with_its_reason():
    from yoloprune.search.executors import MAX_TRIAL_RETRIES, RayPool

    class Died(Exception):
        pass

    class FakeRay:  # every result is a dead worker
        exceptions = type("exceptions", (), {"RayActorError": Died})

        @staticmethod
        def wait(refs, num_returns):
            return refs[:num_returns], refs[num_returns:]

        @staticmethod
        def get(ref):
            raise Died("The actor died unexpectedly: SIGSEGV")

    class Actor:
        score = type("score", (), {"remote": staticmethod(lambda rates: object())})

    started = []
    pool = RayPool.__new__(RayPool)  # no Ray instance: only the retry logic is under test
    pool.ray, pool.log, pool.replaced, pool.deaths, pool.busy = FakeRay(), None, 0, {}, {}
    pool._start = lambda: started.append(1) or Actor()
    pool.actors = [Actor()]
    pool.submit(7, {"model.0": 0.5})
    trial, result = pool.next_result()
    assert trial == 7 and result["score"] == 0.0 and result["map50_95"] == 0.0
    assert f"killed its worker {MAX_TRIAL_RETRIES + 1} times" in result["failed"] and "SIGSEGV" in result["failed"]
    assert len(started) == MAX_TRIAL_RETRIES + 1, "every death replaced the worker, then the trial failed"
    assert pool.idle(), "the worker is free for the next trial"
