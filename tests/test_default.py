"""The embedded default: its weights load with plain Ultralytics, and the demo runs end to end."""

import json
import subprocess
import sys

import numpy as np
import pytest

from yoloprune.default.problem import DEFAULT_WEIGHTS

pytestmark = pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="default weights not trained yet")


def test_default_weights_load_with_plain_yolo_and_detect_shapes():
    from ultralytics import YOLO

    from yoloprune.default.synthdata import render_image

    img, boxes = render_image(192, np.random.default_rng(123))
    result = YOLO(str(DEFAULT_WEIGHTS)).predict(img, imgsz=192, conf=0.25, verbose=False)[0]
    assert len(result.boxes) >= 1
    truth = {c for c, *_ in boxes}
    assert set(result.boxes.cls.int().tolist()) & truth, "no detected class is in the image"


@pytest.mark.slow
def test_demo_quick_runs_end_to_end(tmp_path):
    out = subprocess.run([sys.executable, "-m", "yoloprune", "demo", "--quick", "--out", str(tmp_path / "demo"),
                          "--json"], capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    models = [row["model"] for row in result["table"]]
    assert models == ["original", "pruned", "pruned + fine-tuned"]
    original, pruned, tuned = result["table"]
    assert [row["weights"] for row in result["table"]] == [str(DEFAULT_WEIGHTS), result["search"]["pruned"],
                                                           tuned["weights"]], "each row measures its own model"
    assert pruned["flops"] < 0.6 * original["flops"] and pruned["params"] < original["params"]
    assert tuned["params"] == pruned["params"] and tuned["flops"] == pruned["flops"], "fine-tuning keeps the shapes"
    assert tuned["map50_95"] != pruned["map50_95"], "the fine-tuned model is scored on its own"
    page = (tmp_path / "demo" / "report.html").read_text()
    assert page.count("<img") == 3 and "pruned + fine-tuned" in page
    assert result["search"]["regime"] in ("redundant", "collapsed") and "regime: " in page and "--stages" in page


def test_demo_progress_line_reads_a_scan_before_any_candidate_meets_the_budget():
    from yoloprune import api
    from yoloprune.default.demo import FULL, trial_line
    from yoloprune.search.strategies import auto_strategy

    probe = {"trial": 0, "phase": "scan", "map50_95": 0.61}
    assert trial_line(probe, None, 38) == "  trial 1/38 (scan): mAP50-95 0.6100 (scanning)"
    allocation = {"trial": 37, "phase": "sensitivity", "map50_95": 0.59}
    assert trial_line(allocation, allocation, 38).endswith("(best 0.5900)")
    groups = len(api.analyse(api.load(DEFAULT_WEIGHTS)).groups)
    assert auto_strategy(FULL["trials"], groups, True) == "sensitivity", "the demo runs the default strategy's scan"
