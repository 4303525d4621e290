"""Shared fixtures: offline Ultralytics, a tiny generated data set, tiny models from YAML."""

import os

os.environ["YOLO_OFFLINE"] = "1"
os.environ["YOLO_AUTOINSTALL"] = "false"
os.environ.setdefault("YOLO_VERBOSE", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

TINY_SPLITS = {"train": 24, "calib": 16, "val": 24, "test": 12}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small copy of the synthetic shapes data (96 px) in the Ultralytics and COCO layouts."""
    from yoloprune.default.synthdata import generate

    return generate(tmp_path_factory.mktemp("shapes"), seed=3, size=96, splits=TINY_SPLITS)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """An untrained yolov8n checkpoint at 96 px (for structure, budgets and plumbing; it detects nothing)."""
    from ultralytics.nn.tasks import DetectionModel

    from yoloprune.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("w") / "tiny.pt"
    save_checkpoint(DetectionModel("yolov8n.yaml", nc=10, verbose=False), path, {"imgsz": 96}, {})
    return path


@pytest.fixture(scope="session")
def default_problem():
    """(weights, data) of the embedded default: a model that detects something, for tests about scores."""
    from yoloprune.default.problem import DEFAULT_WEIGHTS, default_dataset

    return DEFAULT_WEIGHTS, default_dataset()
