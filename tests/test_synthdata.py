"""The embedded data set: deterministic, a real detection problem, COCO JSON equal to YOLO labels."""

import json

import numpy as np

from yoloprune.default.synthdata import CLASS_NAMES, generate


def label_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / "labels").rglob("*.txt"))}


def test_same_seed_gives_identical_labels(tmp_path):
    splits = {"train": 6, "val": 4}
    a = generate(tmp_path / "a", seed=7, size=96, splits=splits)
    b = generate(tmp_path / "b", seed=7, size=96, splits=splits)
    c = generate(tmp_path / "c", seed=8, size=96, splits=splits)
    assert label_bytes(a.root) == label_bytes(b.root)
    assert label_bytes(a.root) != label_bytes(c.root)


def test_coco_json_matches_yolo_labels(tiny_data):
    for split in ("val", "test"):
        coco = json.loads(tiny_data.coco_json(split).read_text())
        by_image = {}
        for a in coco["annotations"]:
            by_image.setdefault(a["image_id"], []).append((a["category_id"] - 1, *a["bbox"]))
        for im in coco["images"]:
            w, h = im["width"], im["height"]
            rows = np.loadtxt(tiny_data.root / "labels" / split / im["file_name"].replace(".jpg", ".txt"), ndmin=2)
            yolo = sorted((int(c), (xc - bw / 2) * w, (yc - bh / 2) * h, bw * w, bh * h) for c, xc, yc, bw, bh in rows)
            ours = sorted(by_image.get(im["id"], []))
            assert len(yolo) == len(ours)
            for y, o in zip(yolo, ours):
                assert y[0] == o[0]
                np.testing.assert_allclose(y[1:], o[1:], atol=1e-3)


def test_problem_has_many_classes_and_object_sizes(tmp_path):
    info = generate(tmp_path, seed=0, size=192, splits={"val": 60})
    coco = json.loads(info.coco_json("val").read_text())
    sides = np.array([max(a["bbox"][2], a["bbox"][3]) for a in coco["annotations"]])
    classes = {a["category_id"] for a in coco["annotations"]}
    assert len(CLASS_NAMES) >= 8 and len(classes) == len(CLASS_NAMES)
    assert sides.min() <= 12 and sides.max() >= 192 / 4
    assert len(coco["annotations"]) / len(coco["images"]) >= 3
