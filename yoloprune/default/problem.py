"""Paths and settings of the embedded default problem (bundled data generator and weights)."""

from __future__ import annotations

import json
from pathlib import Path

from yoloprune.cache import cache_root
from yoloprune.default import synthdata

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL_YAML = HERE / "cfg" / "yolov8w-shapes.yaml"
DEFAULT_WEIGHTS = HERE / "weights" / "yolov8w-shapes.pt"  # package data: a wheel is a complete product
DEFAULT_IMGSZ = 192
DEFAULT_SEED = 0


def default_dataset(root: str | Path | None = None) -> synthdata.DatasetInfo:
    """The default data set, generated (about 25 s) into `root` (default: the user cache) unless an identical copy
    exists there."""
    root = Path(root) if root is not None else cache_root() / "shapes"
    wanted = {"seed": DEFAULT_SEED, "size": DEFAULT_IMGSZ, "splits": synthdata.SPLIT_SIZES,
              "version": synthdata.GENERATOR_VERSION}
    manifest = root / "MANIFEST.json"
    if manifest.exists() and json.loads(manifest.read_text()) == json.loads(json.dumps(wanted)):
        return synthdata.DatasetInfo(root, root / "shapes.yaml")
    return synthdata.generate(root, seed=DEFAULT_SEED, size=DEFAULT_IMGSZ)
