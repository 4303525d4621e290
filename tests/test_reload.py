"""Pruned checkpoints are stock Ultralytics: reload with plain YOLO() in a fresh process, export, run in ORT."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from prune_helpers import FAMILIES, build, first_output, size_for

from yoloprune.checkpoint import save_checkpoint
from yoloprune.structure.groups import analyse
from yoloprune.structure.pruner import prune

RELOAD_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, onnxruntime as ort, torch
    from ultralytics import YOLO
    results = {}
    for path, size in json.loads(sys.argv[1]):
        model = YOLO(path)
        x = torch.from_numpy(np.load(path + ".x.npy"))
        net = model.model.float().eval()
        with torch.no_grad():
            y = net(x)
            y = (y[0] if isinstance(y, (tuple, list)) else y).numpy()
        ref = np.load(path + ".y.npy")
        onnx_file = model.export(format="onnx", imgsz=size, simplify=False, verbose=False)
        sess = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
        y_onnx = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        results[path] = {"torch_vs_saved": float(np.abs(y - ref).max()),
                         "onnx_vs_torch": float(np.abs(y_onnx - y).max()), "scale": float(np.abs(y).max()),
                         "yoloprune_imported": "yoloprune" in sys.modules}
    print(json.dumps(results))
""")


@pytest.mark.slow
def test_every_family_reloads_exports_and_matches(tmp_path):
    jobs = []
    for k, yaml in enumerate(FAMILIES):
        model = build(yaml)
        size = size_for(model)
        space = analyse(model, imgsz=size)
        rng = np.random.default_rng(k)
        pruned = prune(model, space, {g.name: float(rng.uniform(0, 0.7)) for g in space.groups}).eval()
        path = str(tmp_path / f"{yaml[:-5]}-pruned.pt")
        save_checkpoint(pruned, path, {"imgsz": size}, {"rates": "random"})
        x = torch.rand(1, 3, size, size)
        with torch.no_grad():
            y = first_output(pruned.half().float()(x))  # the checkpoint stores fp16 weights
        np.save(path + ".x.npy", x.numpy())
        np.save(path + ".y.npy", y.numpy())
        jobs.append((path, size))
    env = {**os.environ, "ULTRALYTICS_SAFE_LOAD": "1"}
    out = subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, json.dumps(jobs)], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(results) == len(FAMILIES)
    for path, r in results.items():
        assert not r["yoloprune_imported"]
        assert r["torch_vs_saved"] <= 1e-3 * r["scale"] + 1e-3, path
        assert r["onnx_vs_torch"] <= 1e-3 * r["scale"] + 1e-3, path
