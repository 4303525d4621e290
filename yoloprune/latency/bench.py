"""ONNX export and ONNX Runtime CPU latency, side by side.

Each model is exported by Ultralytics' own exporter (what users ship), checked against its
PyTorch outputs, then timed in ONNX Runtime with the given intra-op thread counts
(spinning off, so alternating models do not steal each other's cores). Models run
alternately, run for run (A B A B ...), so machine drift hits all of them alike.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from yoloprune import classic
from yoloprune.checkpoint import load, save_checkpoint
from yoloprune.errors import UserError
from yoloprune.threads import torch_threads

ONNX_OPSET = 17


@dataclass
class BenchModel:
    """One benchmarked model: its export, size, agreement with PyTorch and latency per thread count."""

    weights: str
    imgsz: int
    onnx_path: Path
    flops: float
    params: int
    onnx_bytes: int
    max_abs_diff: float
    latency: dict[int, dict] = field(default_factory=dict)


def export_onnx(weights: str, imgsz: int, out_dir: Path, batch: int = 1) -> tuple[Path, torch.nn.Module | None]:
    """(ONNX file, the PyTorch model or None) for a .pt/.yaml (exported here at `batch`) or an existing .onnx
    (whose input must take `batch` images)."""
    if str(weights).endswith(".onnx"):
        if not Path(weights).is_file():
            raise UserError(f"ONNX file not found: {weights}")
        fixed = session(Path(weights), 1).get_inputs()[0].shape[0]
        if isinstance(fixed, int) and fixed != batch:
            raise UserError(f"{weights} was exported for batch {fixed}; time it with --batch {fixed} or export it "
                            f"with a dynamic batch")
        return Path(weights), None
    loaded = load(weights, imgsz)
    loaded.model.half().float()  # the exported checkpoint stores fp16 weights: compare like with like
    return export_model(loaded.model, loaded.train_args, imgsz, out_dir, Path(weights).stem, batch), loaded.model


def export_model(model: torch.nn.Module, train_args: dict, imgsz: int, out_dir: Path, label: str,
                 batch: int = 1) -> Path:
    """Save `model` as a stock checkpoint in `out_dir` and export it there (input batch `batch`) with Ultralytics'
    ONNX exporter."""
    from ultralytics import YOLO

    if classic.is_classic(model):
        return classic.export_onnx(model, imgsz, out_dir / f"{len(list(out_dir.iterdir()))}-{label}.onnx", batch,
                                   ONNX_OPSET)
    work = out_dir / f"{len(list(out_dir.iterdir()))}-{label}.pt"
    save_checkpoint(model, work, train_args or {"imgsz": imgsz}, {})  # the exporter writes beside it
    try:
        with torch_threads():
            f = YOLO(str(work)).export(format="onnx", imgsz=imgsz, opset=ONNX_OPSET, simplify=False, dynamic=False,
                                       batch=batch, verbose=False)
    except Exception as e:  # noqa: BLE001  the exporter and torch.onnx raise many types; the user needs one line
        raise UserError(f"{label}: ONNX export failed ({type(e).__name__}: {str(e).strip().splitlines()[0][:160]})"
                        ) from None
    return Path(f)


def session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def alternate(sessions: list, x: np.ndarray, runs: int, warmup: int) -> np.ndarray:
    """ms of every timed run (sessions, runs) of ONNX Runtime sessions run for run (A B A B ...), after `warmup`
    rounds."""
    names = [s.get_inputs()[0].name for s in sessions]
    times = np.zeros((len(sessions), runs))
    for i in range(warmup + runs):
        for k, (s, name) in enumerate(zip(sessions, names)):
            t0 = time.perf_counter()
            s.run(None, {name: x})
            if i >= warmup:
                times[k, i - warmup] = (time.perf_counter() - t0) * 1e3
    return times


def _flops_params(model: torch.nn.Module | None, imgsz: int) -> tuple[float, int]:
    if model is None:
        return float("nan"), 0
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, imgsz, imgsz))
    return float(counter.get_total_flops()), int(sum(p.numel() for p in model.parameters()))


def benchmark(weights: list[str], imgsz: int = 640, threads: tuple[int, ...] = (1, 2), batch: int = 1,
              runs: int = 50, warmup: int = 10) -> list[BenchModel]:
    """Export every model, check ONNX against PyTorch, then time them alternately per thread count."""
    cores = os.cpu_count() or 1
    if any(t < 1 or t > cores for t in threads):
        raise UserError(f"--threads {','.join(map(str, threads))}: each count must lie in 1..{cores} (visible cores)")
    if runs < 1 or warmup < 0 or batch < 1:
        raise UserError("--runs and --batch must be >= 1 and --warmup >= 0")
    tmp = Path(tempfile.mkdtemp(prefix="yoloprune-bench-"))
    try:
        models = []
        x = np.random.default_rng(0).random((batch, 3, imgsz, imgsz), dtype=np.float32)
        for w in weights:
            path, model = export_onnx(w, imgsz, tmp, batch)
            sess = session(path, 1)
            name = sess.get_inputs()[0].name
            y_onnx = sess.run(None, {name: x})[0]
            diff = float("nan")
            if model is not None:
                with torch.no_grad():
                    y = model.eval()(torch.from_numpy(x))
                    y = (y[0] if isinstance(y, (tuple, list)) else y).numpy()
                diff = float(np.abs(y - y_onnx).max())
                if diff > 1e-3 * max(1.0, float(np.abs(y).max())):
                    raise UserError(f"{w}: ONNX output differs from PyTorch by {diff:.3g}; refusing to time it")
            flops, params = _flops_params(model, imgsz)
            models.append(BenchModel(w, imgsz, path, flops * batch, params, path.stat().st_size, diff))
        for t in threads:
            times = alternate([session(m.onnx_path, t) for m in models], x, runs, warmup)
            base = float(np.median(times[0]))
            for m, ms in zip(models, times):
                p50 = float(np.median(ms))
                m.latency[t] = {"p50_ms": p50, "p90_ms": float(np.percentile(ms, 90)),
                                "p99_ms": float(np.percentile(ms, 99)),
                                "throughput_ips": 1e3 * batch / float(np.mean(ms)), "speedup": base / p50}
        return models
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
