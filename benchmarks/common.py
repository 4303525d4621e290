"""Shared by the benchmark scripts: result files with date, command and versions; resumable units."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_VERBOSE", "false")

RESULTS = Path(__file__).resolve().parent / "results"


def git_commit() -> str:
    """The commit of the code that ran, with '+dirty' when the tracked files differ from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def provenance() -> dict:
    from importlib.metadata import version

    from yoloprune.latency.model import cpu_name

    pkgs = ("torch", "ultralytics", "botorch", "onnxruntime", "pycocotools", "yoloprune")
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name] + sys.argv), "commit": git_commit(),
            "cpu": cpu_name(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "versions": {p: version(p) for p in pkgs}}


def write_result(name: str, payload: dict) -> Path:
    """Write benchmarks/results/<name>.json (whole-run benchmarks)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**provenance(), **payload}, indent=2))
    return path


class UnitLog:
    """benchmarks/results/<name>.jsonl: one line per finished unit; finished units are skipped on rerun."""

    def __init__(self, name: str) -> None:
        RESULTS.mkdir(exist_ok=True)
        self.path = RESULTS / f"{name}.jsonl"

    def done(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        return {r["unit"]: r for r in rows}

    def append(self, unit: str, payload: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"unit": unit, **provenance(), **payload}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def val_curve(best: Path) -> list[float]:
    """Ultralytics' validation mAP50-95 after each epoch of the fine-tune that wrote `best`."""
    import csv

    with open(Path(best).parent.parent / "results.csv") as f:
        return [float(r["metrics/mAP50-95(B)"]) for r in csv.DictReader(f)]
