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
    from yoloprune.synthdata import generate

    return generate(tmp_path_factory.mktemp("shapes"), seed=3, size=96, splits=TINY_SPLITS)


def randomise_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics so channel mistakes show in the outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()
