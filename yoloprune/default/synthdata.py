"""Deterministic synthetic detection data set: the embedded default problem.

Ten shape classes on textured, cluttered backgrounds, with occlusion, distractor shapes
and colour jitter. Written in Ultralytics layout (images/, labels/, dataset YAML) plus a
COCO annotation JSON for the val and test splits. Same seed, byte-identical labels.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

CLASS_NAMES = (
    "circle", "square", "triangle", "pentagon", "hexagon",
    "star", "cross", "ring", "diamond", "crescent",
)
SPLIT_SIZES = {"train": 3000, "calib": 200, "val": 500, "test": 500}
GENERATOR_VERSION = 1
MAX_OCCLUDED_SHARE = 0.4


@dataclass(frozen=True)
class DatasetInfo:
    """Where a generated data set lives."""

    root: Path
    yaml_path: Path

    def coco_json(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{split}.json"


def _polygon(cls: int, rng: np.random.Generator) -> np.ndarray | None:
    """Unit-radius outline of a polygonal class (None for the round classes)."""
    if cls == 1:  # square, slight aspect jitter
        a = rng.uniform(0.85, 1.15)
        return np.array([[-1, -a], [1, -a], [1, a], [-1, a]], float) / math.hypot(1, a)
    if cls in (2, 3, 4):
        n = {2: 3, 3: 5, 4: 6}[cls]
        t = np.arange(n) * 2 * math.pi / n
        return np.stack([np.cos(t), np.sin(t)], 1)
    if cls == 5:  # five-pointed star
        t = np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    if cls == 6:  # plus-shaped cross
        w = rng.uniform(0.25, 0.38)
        return np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1],
                         [-w, 1], [-w, w], [-1, w], [-1, -w], [-w, -w]], float)
    if cls == 8:  # elongated rhombus
        a = rng.uniform(0.45, 0.6)
        return np.array([[0, -1], [a, 0], [0, 1], [-a, 0]], float)
    return None


def _shape_mask(cls: int, cx: float, cy: float, radius: float, angle: float,
                size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of one object of class `cls`."""
    mask = np.zeros((size, size), np.uint8)
    centre = (int(round(cx * 16)), int(round(cy * 16)))
    r16 = int(round(radius * 16))
    if cls == 0:
        cv2.circle(mask, centre, r16, 1, -1, cv2.LINE_8, 4)
    elif cls == 7:  # ring
        cv2.circle(mask, centre, r16, 1, -1, cv2.LINE_8, 4)
        cv2.circle(mask, centre, int(r16 * rng.uniform(0.45, 0.65)), 0, -1, cv2.LINE_8, 4)
    elif cls == 9:  # crescent
        cv2.circle(mask, centre, r16, 1, -1, cv2.LINE_8, 4)
        off = radius * rng.uniform(0.45, 0.7)
        inner = (int(round((cx + off * math.cos(angle)) * 16)), int(round((cy + off * math.sin(angle)) * 16)))
        cv2.circle(mask, inner, int(r16 * rng.uniform(0.8, 0.95)), 0, -1, cv2.LINE_8, 4)
    else:
        pts = _polygon(cls, rng)
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        pts = (pts @ rot.T) * radius + [cx, cy]
        cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return mask.astype(bool)


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Textured background: a low-frequency colour field plus stripes or grain."""
    coarse = rng.uniform(0, 255, (rng.integers(2, 7), rng.integers(2, 7), 3)).astype(np.float32)
    img = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    kind = rng.integers(3)
    if kind == 0:  # stripes
        yy, xx = np.mgrid[0:size, 0:size]
        a = rng.uniform(0, math.pi)
        period = rng.uniform(6, 30)
        stripes = np.sin((xx * math.cos(a) + yy * math.sin(a)) * 2 * math.pi / period)
        img += (stripes[..., None] * rng.uniform(10, 35)).astype(np.float32)
    elif kind == 1:  # mottled texture
        fine = rng.normal(0, 1, (size // 4, size // 4, 1)).astype(np.float32)
        img += cv2.resize(fine, (size, size), interpolation=cv2.INTER_LINEAR)[..., None] * rng.uniform(10, 30)
    img += rng.normal(0, rng.uniform(2, 12), img.shape).astype(np.float32)
    return np.clip(img, 0, 255)


def _distractor_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """An unlabeled shape: a line, an irregular blob or a scribble."""
    mask = np.zeros((size, size), np.uint8)
    kind = rng.integers(3)
    if kind == 0:
        p = rng.integers(0, size, 4)
        cv2.line(mask, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), 1, int(rng.integers(1, 4)))
    elif kind == 1:
        n = int(rng.integers(7, 13))
        t = np.sort(rng.uniform(0, 2 * math.pi, n))
        r = rng.uniform(0.3, 1.0, n) * rng.uniform(4, size / 6)
        c = rng.uniform(0, size, 2)
        pts = np.stack([c[0] + r * np.cos(t), c[1] + r * np.sin(t)], 1)
        cv2.fillPoly(mask, [pts.astype(np.int32)], 1)
    else:
        pts = np.cumsum(rng.normal(0, size / 20, (int(rng.integers(3, 7)), 2)), 0) + rng.uniform(0, size, 2)
        cv2.polylines(mask, [pts.astype(np.int32)], False, 1, int(rng.integers(1, 3)))
    return mask.astype(bool)


def _contrasting_colour(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random colour that stands out from the background under `mask`."""
    under = img[mask].mean(0) if mask.any() else np.full(3, 128.0)
    for _ in range(20):
        colour = rng.uniform(0, 255, 3)
        if np.abs(colour - under).sum() > 120:
            return colour
    return 255 - under


def render_image(size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int, int, int, int]]]:
    """One image (BGR uint8) and its boxes as (class, x0, y0, x1, y1), x1/y1 exclusive."""
    img = _background(size, rng)
    owner = np.full((size, size), -1, np.int32)
    for _ in range(rng.integers(2, 8)):  # clutter under the objects
        m = _distractor_mask(size, rng)
        img[m] = _contrasting_colour(img, m, rng)

    objects: list[tuple[int, int]] = []  # (class, full area)
    for _ in range(rng.integers(1, 11)):
        cls = int(rng.integers(len(CLASS_NAMES)))
        radius = math.exp(rng.uniform(math.log(4.5), math.log(size / 6)))
        cx, cy = rng.uniform(radius * 0.6, size - radius * 0.6, 2)
        mask = _shape_mask(cls, cx, cy, radius, rng.uniform(0, 2 * math.pi), size, rng)
        if mask.sum() < 12 or not _keeps_visible(owner, mask, objects):
            continue
        colour = _contrasting_colour(img, mask, rng)
        shade = rng.uniform(0.75, 1.0)
        img[mask] = colour * shade + rng.normal(0, 6, (int(mask.sum()), 3))
        owner[mask] = len(objects)
        objects.append((cls, int(mask.sum())))

    for _ in range(rng.integers(0, 4)):  # distractors on top, partly occluding
        m = _distractor_mask(size, rng)
        if _keeps_visible(owner, m, objects):
            img[m] = _contrasting_colour(img, m, rng)
            owner[m] = -1

    img = _jitter(img, rng)
    boxes = []
    for k, (cls, _) in enumerate(objects):
        ys, xs = np.nonzero(owner == k)
        boxes.append((cls, int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    return img, boxes


def _keeps_visible(owner: np.ndarray, mask: np.ndarray, objects: list[tuple[int, int]]) -> bool:
    """True if drawing `mask` leaves every object at least (1 - MAX_OCCLUDED_SHARE) visible."""
    hidden = owner[mask]
    hidden = hidden[hidden >= 0]
    if hidden.size == 0:
        return True
    lost = np.bincount(hidden, minlength=len(objects))
    visible = np.bincount(owner[owner >= 0], minlength=len(objects))
    full = np.array([a for _, a in objects])
    return bool(np.all(visible - lost >= (1 - MAX_OCCLUDED_SHARE) * full))


def _jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Global colour jitter (gain, bias, channel mix) and an occasional blur."""
    gain = rng.uniform(0.7, 1.3, 3)
    img = img * gain + rng.uniform(-25, 25)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.3, 1.0))
    return np.clip(img, 0, 255).astype(np.uint8)


def generate(root: str | Path, seed: int = 0, size: int = 192,
             splits: dict[str, int] | None = None) -> DatasetInfo:
    """Write the data set under `root`; returns its paths. Deterministic in `seed`."""
    root = Path(root)
    splits = dict(SPLIT_SIZES if splits is None else splits)
    for s_index, (split, count) in enumerate(splits.items()):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, s_index, GENERATOR_VERSION])
        coco_images, coco_anns = [], []
        for i in range(count):
            img, boxes = render_image(size, rng)
            stem = f"{split}_{i:05d}"
            cv2.imwrite(str(root / "images" / split / f"{stem}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            lines = [f"{c} {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} "
                     f"{(x1 - x0) / size:.6f} {(y1 - y0) / size:.6f}" for c, x0, y0, x1, y1 in boxes]
            (root / "labels" / split / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))
            coco_images.append({"id": i, "file_name": f"{stem}.jpg", "width": size, "height": size})
            for c, x0, y0, x1, y1 in boxes:
                coco_anns.append({"id": len(coco_anns) + 1, "image_id": i, "category_id": c + 1,
                                  "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                  "iscrowd": 0})
        if split in ("val", "test"):
            (root / "annotations").mkdir(exist_ok=True)
            coco = {"images": coco_images, "annotations": coco_anns,
                    "categories": [{"id": k + 1, "name": n} for k, n in enumerate(CLASS_NAMES)]}
            (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    yaml_path = root / "shapes.yaml"
    desc = {"path": str(root.resolve()), "names": dict(enumerate(CLASS_NAMES))}
    desc.update({split: f"images/{split}" for split in splits})
    yaml_path.write_text(yaml.safe_dump(desc, sort_keys=False))
    (root / "MANIFEST.json").write_text(json.dumps(
        {"seed": seed, "size": size, "splits": splits, "version": GENERATOR_VERSION}, sort_keys=True))
    return DatasetInfo(root, yaml_path)
