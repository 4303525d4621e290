"""pycocotools is the metric; the slice evaluator agrees with Ultralytics' validator; recalibration works."""

import pytest
import torch
import yaml

from yoloprune.data import load_split, subset, take_slice
from yoloprune.defaults import DEFAULT_WEIGHTS
from yoloprune.evaluate import TrialEvaluator, calibration_batches, coco_score, evaluate, recalibrate_bn

GT = {
    "images": [{"id": 0, "width": 100, "height": 100}, {"id": 1, "width": 100, "height": 100}],
    "annotations": [
        {"id": 1, "image_id": 0, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 20, 40], "area": 800, "iscrowd": 0},
    ],
    "categories": [{"id": 1, "name": "a"}],
}


def detection(ann, score=0.9):
    return {"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": ann["bbox"], "score": score}


def test_perfect_detections_score_one():
    assert coco_score(GT, [detection(a) for a in GT["annotations"]]) == pytest.approx((1.0, 1.0))


def test_a_missed_object_halves_ap():
    # one of two objects found: recall 0.5 at precision 1 -> AP = 51/101 on COCO's 101-point grid
    m, m50 = coco_score(GT, [detection(GT["annotations"][0])])
    assert m == pytest.approx(51 / 101, abs=1e-6) and m50 == pytest.approx(51 / 101, abs=1e-6)


def test_a_false_positive_ranked_first_lowers_ap():
    fp = {"image_id": 0, "category_id": 1, "bbox": [70, 70, 10, 10], "score": 0.99}
    m, _ = coco_score(GT, [fp] + [detection(a, 0.5) for a in GT["annotations"]])
    assert 0.5 < m < 1.0


@pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="default weights not trained yet")
def test_agrees_with_ultralytics_validator(tmp_path):
    from ultralytics import YOLO

    from yoloprune.checkpoint import load_model
    from yoloprune.defaults import default_dataset

    data = default_dataset()
    model, _ = load_model(DEFAULT_WEIGHTS)
    det = load_split(data.yaml_path, "val", model.names)
    sub = subset(det, take_slice(det, 60))
    ours = evaluate(model, sub, 192)
    listing = tmp_path / "slice.txt"
    listing.write_text("\n".join(str(p) for p in sub.images))
    desc = yaml.safe_load(data.yaml_path.read_text())
    desc["val"] = str(listing)
    (tmp_path / "slice.yaml").write_text(yaml.safe_dump(desc))
    theirs = YOLO(str(DEFAULT_WEIGHTS)).val(data=str(tmp_path / "slice.yaml"), imgsz=192, batch=32, rect=False,
                                           conf=0.001, iou=0.7, max_det=100, plots=False, device="cpu")
    assert ours.map50_95 == pytest.approx(theirs.box.map, abs=0.02)


def test_recalibration_resets_and_reestimates_bn(tiny_data):
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov8n.yaml", nc=10, verbose=False).eval()
    batches = calibration_batches(tiny_data.yaml_path, "calib", 8, 96, batch=4)
    imgs = [b["img"] for b in batches]
    assert len(batches) == 2 and imgs[0].dtype == torch.uint8 and imgs[0].shape[1:] == (3, 96, 96)
    assert {"cls", "bboxes", "batch_idx"} <= set(batches[0]), "labels kept for the short recovery"
    again = calibration_batches(tiny_data.yaml_path, "calib", 8, 96, batch=4)
    assert all(torch.equal(a, b["img"]) for a, b in zip(imgs, again)), "calibration batches must be seeded"
    bn = model.model[0].bn
    bn.running_mean.fill_(5.0)
    recalibrate_bn(model, batches)
    x = torch.cat(imgs).float() / 255
    with torch.no_grad():
        expected = model.model[0].conv(x).mean((0, 2, 3))
    torch.testing.assert_close(bn.running_mean, expected, rtol=1e-3, atol=1e-4)
    assert not bn.training


def test_trial_evaluator_slices_are_disjoint_and_reused(tiny_data):
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov8n.yaml", nc=10, verbose=False).eval()
    names = {i: n for i, n in enumerate(yaml.safe_load(tiny_data.yaml_path.read_text())["names"].values())}
    ev = TrialEvaluator(tiny_data.yaml_path, names, 96, val_images=8, calib_images=8, final_split="val",
                        final_images=None)
    assert not set(ev.search.images) & set(ev.final.images)
    assert len(ev.search.images) == 8 and len(ev.final.images) == 16
    r = ev.score(model)
    assert r.images == 8 and 0.0 <= r.map50_95 <= 1.0


@pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="default weights not trained yet")
def test_exported_onnx_scores_like_its_checkpoint(tmp_path):
    import subprocess
    import sys

    from yoloprune import api
    from yoloprune.bench import export_onnx
    from yoloprune.defaults import default_dataset

    data = default_dataset()
    onnx_path, _ = export_onnx(str(DEFAULT_WEIGHTS), 192, tmp_path)
    pt = api.evaluate(DEFAULT_WEIGHTS, data.yaml_path, val_images=40)
    ox = api.evaluate(onnx_path, data.yaml_path, val_images=40)
    assert ox.images == 40 and ox.map50_95 == pytest.approx(pt.map50_95, abs=0.005)
    (tmp_path / "junk.onnx").write_text("not a model")
    for extra in (["--weights", str(tmp_path / "junk.onnx")], ["--weights", str(onnx_path), "--recalibrate"],
                  ["--weights", str(onnx_path), "--imgsz", "96"]):
        out = subprocess.run([sys.executable, "-m", "yoloprune", "eval", "--data", str(data.yaml_path), *extra],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
