"""torch's intra-op thread count, kept or set for a block and restored after it."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def torch_threads(n: int | None = None):
    """Run the block with `n` torch threads (None: as now) and restore the count afterwards, whatever the block
    did: Ultralytics' select_device (val, train, export) leaves torch at cores - 1 threads."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
