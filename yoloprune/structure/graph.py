"""Channel dependency graph of a model, found by running it once under a torch function mode.

Every output channel of every Conv2d is a *unit*. Ops that tie channels together
(residual adds and products, depthwise convs, repeated use of a tensor in a Concat) merge
units in a union-find; ops that only move channels (Concat, chunk, pooling, upsampling,
activations, BatchNorm) carry them along; and any op the tracer does not understand
(view, reshape, matmul, ...) holds every unit it touches fixed, with the reason recorded.
This is the whole safety argument: nothing is pruned unless every op it flows through is
known to be channel-wise. The graph knows no pruning policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

FIXED = -1  # source id of a channel that can never be pruned (image input, unknown op output)

_PASS_THROUGH = {
    "silu", "relu", "relu_", "sigmoid", "hardswish", "hardsigmoid", "leaky_relu", "gelu", "mish",
    "tanh", "elu", "relu6", "dropout", "max_pool2d", "_max_pool2d", "avg_pool2d", "interpolate",
    "upsample", "contiguous", "clone", "detach", "float", "half", "to", "type_as", "identity",
}
_BINARY = {"add", "__add__", "__radd__", "mul", "__mul__", "__rmul__", "sub", "__sub__"}
_SHAPE_ONLY = {"__get__", "dim", "size", "numel", "__len__", "is_floating_point", "get_device"}


class _UnionFind:
    """Union-find over unit ids, with a `fixed` flag and its reason per root."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.reason: dict[int, str] = {}

    def add(self, n: int) -> int:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return start

    def find(self, u: int) -> int:
        root = u
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[u] != root:
            self.parent[u], u = root, self.parent[u]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            if rb in self.reason:
                self.reason.setdefault(ra, self.reason.pop(rb))

    def fix(self, u: int, reason: str) -> None:
        self.reason.setdefault(self.find(u), reason)

    def fixed_reason(self, u: int) -> str | None:
        return self.reason.get(self.find(u))


@dataclass
class ConvNode:
    """One traced Conv2d: where its input channels come from and where its outputs go."""

    name: str
    module: nn.Conv2d
    first_unit: int
    in_sources: np.ndarray  # unit id per input channel, FIXED for untracked ones
    area: int  # output height x width at the trace size
    depthwise: bool


@dataclass
class ChannelGraph:
    """Result of tracing: convs, BatchNorms and channel ties of one model."""

    uf: _UnionFind
    convs: dict[str, ConvNode] = field(default_factory=dict)
    bns: dict[str, tuple[nn.BatchNorm2d, np.ndarray]] = field(default_factory=dict)
    ties: list[list[np.ndarray]] = field(default_factory=list)  # equal-size channel splits
    trace_imgsz: int = 64

    def root(self, source: int) -> int:
        return FIXED if source == FIXED else self.uf.find(source)

    def out_units(self, conv: ConvNode) -> np.ndarray:
        return np.arange(conv.first_unit, conv.first_unit + conv.module.out_channels)


class _Tracer(TorchFunctionMode):
    def __init__(self, model: nn.Module, graph: ChannelGraph) -> None:
        super().__init__()
        self.graph = graph
        self.names = {m: n for n, m in model.named_modules()}
        self.conv_by_weight = {id(m.weight): m for m in model.modules() if isinstance(m, nn.Conv2d)}
        self.bn_by_weight = {id(m.weight): m for m in model.modules()
                             if isinstance(m, nn.BatchNorm2d) and m.weight is not None}
        self.sources: dict[int, np.ndarray] = {}
        self.alive: list[torch.Tensor] = []  # keeps ids unique while tracing
        self.module_stack: list[str] = []

    # -- bookkeeping ---------------------------------------------------------------
    def _src(self, t: torch.Tensor) -> np.ndarray:
        s = self.sources.get(id(t))
        if s is None:
            s = np.full(t.shape[1] if t.dim() > 1 else 0, FIXED, np.int64)
        return s

    def _set(self, t: torch.Tensor, s: np.ndarray) -> None:
        if isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[1] == len(s):
            self.sources[id(t)] = s
            self.alive.append(t)

    def _fix(self, sources: np.ndarray, reason: str) -> None:
        for u in sources[sources != FIXED]:
            self.graph.uf.fix(int(u), reason)

    def _tracked(self, obj) -> list[torch.Tensor]:
        flat = obj if isinstance(obj, (list, tuple)) else [obj]
        out = []
        for x in flat:
            if isinstance(x, (list, tuple)):
                out += self._tracked(x)
            elif isinstance(x, torch.Tensor) and id(x) in self.sources:
                out.append(x)
        return out

    def where(self) -> str:
        return self.module_stack[-1] if self.module_stack else "model"

    # -- op handlers -----------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in _SHAPE_ONLY:
            return out
        tracked = self._tracked(list(args) + list(kwargs.values()))
        if name == "conv2d":
            self._conv(args, kwargs, out)
        elif name == "batch_norm":
            self._batch_norm(args, kwargs, out)
        elif not tracked or (name == "type_as" and id(args[0]) not in self.sources):
            return out  # nothing tracked, or only the dtype of a tracked tensor is read
        elif name in _PASS_THROUGH and isinstance(out, torch.Tensor) and out.dim() == 4 \
                and out.shape[1] == args[0].shape[1]:
            self._set(out, self._src(args[0]))
        elif name in _BINARY and self._binary(args, out):
            pass
        elif name == "cat" and args and self._dim1(args[1] if len(args) > 1 else kwargs.get("dim", 0), args[0][0]):
            self._set(out, np.concatenate([self._src(t) for t in args[0]]))
        elif name in ("chunk", "split") and self._dim1(args[2] if len(args) > 2 else kwargs.get("dim", 0), args[0]):
            self._split(args[0], out)
        else:
            for t in tracked:
                self._fix(self._src(t), f"op '{name}' in {self.where()} is not channel-wise")
        return out

    @staticmethod
    def _dim1(dim: int, t: torch.Tensor) -> bool:
        return t.dim() == 4 and dim in (1, -3)

    def _conv(self, args, kwargs, out) -> None:
        x, weight = args[0], args[1]
        conv = self.conv_by_weight.get(id(weight))
        if conv is None:
            self._fix(self._src(x), f"functional conv2d in {self.where()} has no module")
            return
        g = self.graph
        name = self.names[conv]
        src = self._src(x)
        node = g.convs.get(name)
        depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
        if node is None:
            node = ConvNode(name, conv, g.uf.add(conv.out_channels), src.copy(),
                            int(out.shape[2] * out.shape[3]), depthwise)
            g.convs[name] = node
        else:  # the same conv applied twice: its inputs must be pruned together
            for a, b in zip(node.in_sources, src):
                self._tie(int(a), int(b), f"{name} is applied to inputs of different origin")
        units = g.out_units(node)
        if depthwise:
            for u, s in zip(units, src):
                self._tie(int(u), int(s), f"depthwise {name} reads a fixed channel")
        elif conv.groups > 1:
            self._fix(src, f"grouped conv {name} (groups={conv.groups}) is not handled")
            self._fix(units, f"grouped conv {name} (groups={conv.groups}) is not handled")
        self._set(out, units.copy())

    def _tie(self, a: int, b: int, reason: str) -> None:
        """Channels a and b must be removed together (FIXED if either is fixed)."""
        uf = self.graph.uf
        if a == FIXED and b == FIXED:
            return
        if a == FIXED or b == FIXED:
            uf.fix(b if a == FIXED else a, reason)
            return
        uf.union(a, b)

    def _batch_norm(self, args, kwargs, out) -> None:
        x, weight = args[0], args[3] if len(args) > 3 else kwargs.get("weight")
        bn = self.bn_by_weight.get(id(weight)) if weight is not None else None
        src = self._src(x)
        if bn is None:
            self._fix(src, f"functional batch_norm in {self.where()} has no module")
            return
        name = self.names[bn]
        prev = self.graph.bns.get(name)
        if prev is not None:
            for a, b in zip(prev[1], src):
                self._tie(int(a), int(b), f"{name} is applied to inputs of different origin")
        else:
            self.graph.bns[name] = (bn, src.copy())
        self._set(out, src)

    def _binary(self, args, out) -> bool:
        if len(args) < 2:
            return False  # operands passed by keyword: not understood, so held fixed
        a, b = args[0], args[1]
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            other = a if isinstance(a, torch.Tensor) else b
            if isinstance(out, torch.Tensor) and out.shape == other.shape:
                self._set(out, self._src(other))
                return True
            return False
        if a.shape != b.shape or a.dim() != 4:
            return False
        sa, sb = self._src(a), self._src(b)
        for x, y in zip(sa, sb):
            self._tie(int(x), int(y), f"elementwise op in {self.where()} meets a fixed channel")
        self._set(out, sa)
        return True

    def _split(self, x: torch.Tensor, parts) -> None:
        src = self._src(x)
        start, slices = 0, []
        for p in parts:
            n = p.shape[1]
            self._set(p, src[start:start + n])
            slices.append(src[start:start + n])
            start += n
        if len({len(s) for s in slices}) == 1 and len(slices) > 1:
            self.graph.ties.append(slices)
        else:
            self._fix(src, f"unequal channel split in {self.where()}")


def trace(model: nn.Module, imgsz: int = 64) -> ChannelGraph:
    """Trace `model` (unchanged) in eval and train mode at `imgsz` and return its channel graph."""
    import copy

    work = copy.deepcopy(model).float()
    graph = ChannelGraph(_UnionFind(), trace_imgsz=imgsz)
    tracer = _Tracer(work, graph)
    hooks = []
    for n, m in work.named_modules():
        hooks.append(m.register_forward_pre_hook(lambda mod, inp, n=n: tracer.module_stack.append(n)))
        hooks.append(m.register_forward_hook(lambda mod, inp, out: tracer.module_stack.pop() and None))
    try:
        for training in (False, True):
            work.train(training)
            with torch.no_grad(), tracer:
                out = work(torch.zeros(1, 3, imgsz, imgsz))
            for t in tracer._tracked(_flatten(out)):
                tracer._fix(tracer._src(t), "feeds the model output (box, class or mask channels)")
    finally:
        for h in hooks:
            h.remove()
    # map the deep copy's modules back onto the caller's model by name
    modules = dict(model.named_modules())
    for node in graph.convs.values():
        node.module = modules[node.name]
    graph.bns = {n: (modules[n], s) for n, (_, s) in graph.bns.items()}
    return graph


def _flatten(obj) -> list:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for x in obj for t in _flatten(x)]
    return []
