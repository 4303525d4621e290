"""`--device`, in Ultralytics' syntax: `cpu`, `0` or `cuda:0`; by default the first CUDA device when one is
visible, else the CPU (as Ultralytics chooses). ONNX Runtime timing (`bench`, latency budgets) stays on the CPU
whatever the device: its thread counts are the edge stand-in.
"""

from __future__ import annotations

import re

import torch

from yoloprune.errors import UserError

DEVICE_HELP = "cpu, 0 or cuda:0 (default: the first CUDA device when one is visible, else the CPU)"


def resolve_device(spec: str | None = None) -> str:
    """The torch device string ("cpu" or "cuda:N") for a --device value; UserError when it cannot hold here."""
    if spec is None or str(spec).strip() == "":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    text = str(spec).strip().lower()
    if text == "cpu":
        return "cpu"
    match = re.fullmatch(r"(?:cuda:)?(\d+)", text)
    if not match:
        raise UserError(f"unknown --device '{spec}': use cpu, 0 or cuda:0")
    index = int(match.group(1))
    if not torch.cuda.is_available():
        raise UserError(f"--device {spec}: no CUDA device is visible here (torch {torch.__version__}); "
                        f"use --device cpu")
    if index >= torch.cuda.device_count():
        raise UserError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible here")
    return f"cuda:{index}"


def trainer_device(device: str) -> str:
    """Ultralytics' trainer syntax for a resolved device: "cpu" or the CUDA index."""
    return "cpu" if device == "cpu" else device.split(":")[1]
