"""pycocotools is the metric; the slice evaluator agrees with Ultralytics' validator; recalibration works."""

import pytest
import torch
import yaml

from yoloprune.default.problem import DEFAULT_WEIGHTS
from yoloprune.evaluation.calibration import calibration_batches, recalibrate_bn
from yoloprune.evaluation.data import load_split, subset, take_slice
from yoloprune.evaluation.evaluator import TrialEvaluator
from yoloprune.evaluation.metric import coco_score, evaluate

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
    from yoloprune.default.problem import default_dataset

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


def test_trial_evaluator_slices_are_disjoint_and_scores_a_detector(default_problem):
    from yoloprune.checkpoint import load

    weights, data = default_problem
    loaded = load(weights)
    ev = TrialEvaluator(data.yaml_path, loaded.model.names, 192, val_images=8, calib_images=8, final_split="val",
                        final_images=16, slice_seed=0)
    assert not set(ev.search.images) & set(ev.final.images)
    assert len(ev.search.images) == 8 and len(ev.final.images) == 16
    val = sorted(p.name for p in load_split(data.yaml_path, "val", loaded.model.names).images)
    assert [p.name for p in ev.search.images] != val[:8], "the search slice is a seeded draw, not the first N"
    r = ev.score(loaded.model)
    assert r.images == 8 and r.map50_95 > 0.3, "a detector scores well above zero"
    again = TrialEvaluator(data.yaml_path, loaded.model.names, 192, val_images=8, calib_images=8, slice_seed=0)
    assert again.search.images == ev.search.images, "same seed, same slice"


@pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="default weights not trained yet")
def test_exported_onnx_scores_like_its_checkpoint(tmp_path):
    import subprocess
    import sys

    from yoloprune import api
    from yoloprune.default.problem import default_dataset
    from yoloprune.latency.bench import export_onnx

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


def test_polygon_labels_become_boxes_and_exif_rotation_sets_the_size(tmp_path):
    from PIL import Image

    from yoloprune.evaluation.data import from_yaml

    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "labels" / "val").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 80 wide x 40 high, shown rotated by 90 degrees: 40 wide x 80 high
    Image.new("RGB", (80, 40), (90, 90, 90)).save(tmp_path / "images" / "val" / "a.jpg", exif=exif)
    (tmp_path / "labels" / "val" / "a.txt").write_text("0 0.5 0.5 0.5 0.25\n1 0.1 0.2 0.3 0.2 0.3 0.6 0.1 0.6\n")
    (tmp_path / "d.yaml").write_text(yaml.safe_dump({"path": str(tmp_path), "train": "images/val",
                                                     "val": "images/val", "names": {0: "a", 1: "b"}}))
    det = from_yaml(tmp_path / "d.yaml", "val")
    assert (det.coco["images"][0]["width"], det.coco["images"][0]["height"]) == (40, 80)
    box, polygon = det.coco["annotations"]
    assert box["bbox"] == pytest.approx([10, 30, 20, 20])
    assert polygon["category_id"] == 2 and polygon["bbox"] == pytest.approx([4, 16, 8, 32])


def test_classes_are_matched_by_name(tiny_data, tmp_path):
    import json

    from yoloprune.errors import UserError

    names = yaml.safe_load(tiny_data.yaml_path.read_text())["names"]
    model_names = {int(k): v for k, v in names.items()}
    coco = json.loads(tiny_data.coco_json("val").read_text())
    shuffled = {**coco, "categories": [{**c, "id": 100 - c["id"]} for c in coco["categories"]]}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps(shuffled))
    det = load_split(tmp_path / "annotations" / "instances_val.json", "val", model_names,
                     image_dir=str(tiny_data.coco_json("val").parent.parent / "images" / "val"))
    by_name = {c["name"]: c["id"] for c in shuffled["categories"]}
    assert det.class_to_category == {i: by_name[n] for i, n in model_names.items()}, "by name, not by order"
    renamed = {**coco, "categories": [{**c, "name": f"thing{c['id']}"} for c in coco["categories"]]}
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps(renamed))
    with pytest.raises(UserError, match="class mismatch"):
        load_split(tmp_path / "annotations" / "instances_val.json", "val", model_names,
                   image_dir=str(tiny_data.coco_json("val").parent.parent / "images" / "val"))
    other = {**yaml.safe_load(tiny_data.yaml_path.read_text()), "names": {k: f"x{k}" for k in names},
             "path": str(tiny_data.yaml_path.parent)}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    with pytest.raises(UserError, match="class mismatch"):
        load_split(tmp_path / "other.yaml", "val", model_names)
    unnamed = {i: str(i) for i in model_names}  # a model built from a YAML: by order
    assert load_split(tmp_path / "other.yaml", "val", unnamed).class_to_category == {i: i + 1 for i in model_names}
