"""PruneSpace: the named, prunable channel groups of a model and its analytic FLOPs model (data only;
`groups.analyse` builds it, `cost` fills its FLOPs model).

A group is a set of coupled channel units that share one prune rate. Most groups have one
*part*; an equal-size split (C2f's `chunk(2)`) ties two parts that must keep the same
count but may drop different channels. FLOPs are computed from channel counts
(Cin/groups x Cout x k^2 x output area per conv, x2 for multiply-add), vectorised over
many candidates at once, so budget projection costs microseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from yoloprune.structure.graph import ChannelGraph


@dataclass
class Group:
    """One prunable group: its name, member convs and parts (arrays of union-find roots)."""

    name: str
    convs: list[str]
    parts: list[np.ndarray]
    min_keep: int = 1
    flops_share: float = 0.0

    @property
    def part_size(self) -> int:
        return len(self.parts[0])

    @property
    def channels(self) -> int:
        return self.part_size * len(self.parts)


@dataclass
class PruneSpace:
    """Prunable groups, held-fixed modules and the FLOPs model of one model at one image size."""

    graph: ChannelGraph
    groups: list[Group]
    fixed: list[dict]
    imgsz: int
    round_to: int
    # FLOPs model: flops(f) = 2 * sum_c w_c * (in_fixed_c + A_in[c] . f) * (out_fixed_c + A_out[c] . f)
    conv_names: list[str] = field(default_factory=list)
    weight: np.ndarray = None
    conv_area: np.ndarray = None  # output pixels of each conv at imgsz
    in_fixed: np.ndarray = None
    a_in: np.ndarray = None
    out_fixed: np.ndarray = None
    a_out: np.ndarray = None
    part_group: np.ndarray = None  # group index of each part
    other_flops: float = 0.0  # FLOPs of ops outside the traced convs (attention matmuls, transposed convs)

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    # -- keep counts ---------------------------------------------------------------
    def kept_count(self, group: Group, rate: float) -> int:
        """Channels kept per part at prune rate `rate`, rounded to `round_to`, >= min_keep."""
        return int(_kept(group.part_size, self._step(group.part_size), group.min_keep, rate))

    def _step(self, size):
        return np.where(np.asarray(size) >= self.round_to, self.round_to, 1)

    def keep_fractions(self, rates: np.ndarray, rounded: bool = True) -> np.ndarray:
        """Per-part kept fraction for a (B, G) array of rates; rounded as the pruner rounds."""
        rates = np.atleast_2d(np.asarray(rates, float))
        size = np.array([g.part_size for g in self.groups], float)
        min_keep = np.array([g.min_keep for g in self.groups], float)
        keep = _kept(size, self._step(size) if rounded else None, min_keep, rates)
        return (keep / size)[:, self.part_group]

    def realised_rates(self, rates: np.ndarray) -> np.ndarray:
        """The rates the pruner actually applies (after rounding and minimum keep), (B, G)."""
        rates = np.atleast_2d(np.asarray(rates, float))
        first_part = np.array([int(np.argmax(self.part_group == i)) for i in range(len(self.groups))])
        return 1.0 - self.keep_fractions(rates)[:, first_part]

    def conv_channels(self, rates: np.ndarray | None = None, rounded: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(input, output) channel counts of every traced conv, each (B, n_convs), for a (B, G) array of rates."""
        if rates is None:
            rates = np.zeros((1, len(self.groups)))
        f = self.keep_fractions(rates, rounded)
        return self.in_fixed + f @ self.a_in.T, self.out_fixed + f @ self.a_out.T

    def flops(self, rates: np.ndarray | None = None, rounded: bool = True) -> np.ndarray:
        """Conv FLOPs (2 x MACs) for a (B, G) array of rates; None means the unpruned model."""
        cin, cout = self.conv_channels(rates, rounded)
        return 2.0 * (cin * cout) @ self.weight + self.other_flops

    def flops_ratio(self, rates: np.ndarray, rounded: bool = True) -> np.ndarray:
        return self.flops(rates, rounded) / self.flops()[0]

    def rates_vector(self, rates: dict[str, float]) -> np.ndarray:
        """Dict {group: rate} (missing groups: 0) as a vector in group order."""
        index = {n: i for i, n in enumerate(self.names)}
        v = np.zeros(len(self.groups))
        for name, r in rates.items():
            v[index[name]] = r
        return v


def _kept(size, step, min_keep, rate):
    """Kept channels: size x (1 - rate) rounded to the nearest multiple of `step` or to the full size
    (so rate 0 keeps everything), within [min_keep, size]; step None: unrounded."""
    keep = size * (1.0 - np.asarray(rate, float))
    if step is not None:
        rounded = np.round(keep / step) * step
        keep = np.where(np.abs(size - keep) <= np.abs(rounded - keep), size, rounded)
    return np.minimum(size, np.maximum(min_keep, keep))


def short_name(conv_name: str) -> str:
    """`model.4.m.0.cv1.conv` -> `model.4.m.0.cv1` (Ultralytics Conv wraps nn.Conv2d as .conv)."""
    return conv_name[: -len(".conv")] if conv_name.endswith(".conv") else conv_name
