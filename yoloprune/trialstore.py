"""Append-only trial log (`trials.jsonl`): one JSON line per finished trial, flushed and fsynced.

A search killed at any moment loses at most the trial in flight; `load` skips a torn last line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class TrialStore:
    """The trials of one run folder."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / "trials.jsonl"

    def load(self) -> list[dict]:
        if not self.path.exists():
            return []
        trials = []
        for line in self.path.read_text().splitlines():
            try:
                trials.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line torn by a kill: everything before it is intact
        return trials

    def append(self, trial: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(trial) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def rewrite(self, trials: list[dict]) -> None:
        """Drop a torn tail by rewriting the intact trials atomically."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(t) + "\n" for t in trials))
        os.replace(tmp, self.path)
