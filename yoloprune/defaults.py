"""Paths and settings of the embedded default problem (bundled data generator and weights)."""

from __future__ import annotations

import json
from pathlib import Path

from yoloprune import synthdata

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
DEFAULT_MODEL_YAML = PACKAGE_DIR / "cfg" / "yolov8w-shapes.yaml"
DEFAULT_WEIGHTS = REPO_ROOT / "weights" / "yolov8w-shapes.pt"
DEFAULT_DATA_DIR = REPO_ROOT / "data" / "shapes"
DEFAULT_IMGSZ = 192
DEFAULT_SEED = 0


def default_dataset(root: str | Path = DEFAULT_DATA_DIR) -> synthdata.DatasetInfo:
    """The default data set, generated (about 25 s) unless an identical copy exists."""
    root = Path(root)
    wanted = {"seed": DEFAULT_SEED, "size": DEFAULT_IMGSZ, "splits": synthdata.SPLIT_SIZES,
              "version": synthdata.GENERATOR_VERSION}
    manifest = root / "MANIFEST.json"
    if manifest.exists() and json.loads(manifest.read_text()) == json.loads(json.dumps(wanted)):
        return synthdata.DatasetInfo(root, root / "shapes.yaml")
    return synthdata.generate(root, seed=DEFAULT_SEED, size=DEFAULT_IMGSZ)
