"""Where yoloprune keeps what it can regenerate: the default data set and fitted latency models."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$YOLOPRUNE_CACHE, else ~/.cache/yoloprune."""
    return Path(os.environ.get("YOLOPRUNE_CACHE", Path.home() / ".cache" / "yoloprune"))
