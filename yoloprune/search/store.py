"""One run folder and everything written to it, each write atomic or append-only in one place.

- `trials.jsonl`: one JSON line per finished trial, flushed and fsynced; a search killed at any
  moment loses at most the trial in flight, and `trials()` skips a line torn by a kill;
- `meta.json` (the run's identity, checked on resume), `summary.json`, `latency_model.json`,
  `best_rates.yaml` and any other file: written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from yoloprune.atomic import write_text_atomic
from yoloprune.errors import UserError


def run_dir_for(project: str | Path, name: str | None, resume: bool) -> Path:
    """The run folder: the named or latest one on resume, else the named one or the next free expN."""
    project = Path(project)
    runs = sorted((p for p in project.glob("exp*") if re.fullmatch(r"exp\d*", p.name)),
                  key=lambda p: int(p.name[3:] or 1))
    if resume:
        target = project / name if name else (runs[-1] if runs else None)
        if target is None or not (target / "meta.json").exists():
            raise UserError(f"nothing to resume in {target or project}")
        return target
    if name:
        target = project / name
        if (target / "meta.json").exists():
            raise UserError(f"{target} already holds a search; pass --resume to continue it or another --name")
        return target
    n = max((int(p.name[3:] or 1) for p in runs), default=0) + 1
    return project / ("exp" if n == 1 else f"exp{n}")


class RunStore:
    """The files of one run folder."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)
        self.trials_path = self.dir / "trials.jsonl"

    # -- trials -------------------------------------------------------------------
    def trials(self) -> list[dict]:
        """The intact trials, in the order they finished (a torn last line is dropped from the file too)."""
        if not self.trials_path.exists():
            return []
        trials = []
        for line in self.trials_path.read_text().splitlines():
            try:
                trials.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line torn by a kill: everything before it is intact
        self.write_text("trials.jsonl", "".join(json.dumps(t) + "\n" for t in trials))
        return trials

    def append_trial(self, trial: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.trials_path, "a") as f:
            f.write(json.dumps(trial) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # -- whole files --------------------------------------------------------------
    def has(self, name: str) -> bool:
        return (self.dir / name).exists()

    def read_json(self, name: str) -> dict:
        return json.loads((self.dir / name).read_text())

    def write_json(self, name: str, obj: dict) -> None:
        self.write_text(name, json.dumps(obj, indent=2))

    def write_text(self, name: str, text: str) -> None:
        write_text_atomic(self.dir / name, text)

    def path(self, name: str) -> Path:
        return self.dir / name

    def check_identity(self, meta: dict, keys: tuple[str, ...]) -> dict:
        """The recorded meta of a run being resumed; refused when it differs from `meta` in any of `keys`."""
        old = self.read_json("meta.json")
        diff = [k for k in keys if old.get(k) != meta.get(k)]
        if diff:
            raise UserError(f"cannot resume {self.dir}: its {', '.join(diff)} differ from this command's")
        return old
