"""Data sources for evaluation: an Ultralytics dataset YAML or a COCO annotation JSON plus images.

Both become one `DetSplit`: image paths in a stable order, the ground truth as a COCO
dict, and the mapping from model class index to COCO category id (by name when the
names agree, else by order: COCO's 80 classes live in 91 ids).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from yoloprune.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class DetSplit:
    """One split of a detection data set, in COCO terms."""

    images: list[Path]
    coco: dict  # {"images", "annotations", "categories"}; image ids are positions in `images`
    names: dict[int, str]
    class_to_category: dict[int, int]
    source: str


def _norm(name: str) -> str:
    return name.lower().replace("_", " ").strip()


def _category_map(model_names: dict[int, str], categories: list[dict]) -> dict[int, int]:
    by_name = {_norm(c["name"]): c["id"] for c in categories}
    if all(_norm(n) in by_name for n in model_names.values()):
        return {i: by_name[_norm(n)] for i, n in model_names.items()}
    if len(categories) == len(model_names):
        ids = sorted(c["id"] for c in categories)
        return {i: ids[k] for k, i in enumerate(sorted(model_names))}
    raise UserError(f"class mismatch: the model has {len(model_names)} classes, the data {len(categories)} "
                    "categories, and their names differ")


def dataset_yaml(path: str | Path) -> dict:
    """Resolve an Ultralytics dataset YAML (no download) into its dict with absolute split paths."""
    from ultralytics.data.utils import check_det_dataset

    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path} (give a dataset YAML or a COCO annotation JSON)")
    try:
        return check_det_dataset(str(path), autodownload=False)
    except Exception as e:  # noqa: BLE001 - Ultralytics raises several types for a bad YAML
        raise UserError(f"{path}: {str(e).strip().splitlines()[0]}") from None


def split_paths(data: dict, split: str) -> list[Path]:
    """The folder(s) or list file(s) a split names, as absolute paths."""
    entry = data.get(split)
    if not entry:
        raise UserError(f"the data set has no '{split}' split")
    root = Path(data.get("path", "."))
    return [Path(item) if Path(item).is_absolute() else root / item
            for item in (entry if isinstance(entry, list) else [entry])]


def split_images(data: dict, split: str) -> list[Path]:
    """Image files of `split` (a folder, a list file, or a list of either) in sorted order."""
    files: list[Path] = []
    for p in split_paths(data, split):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file() and p.suffix == ".txt":
            files += [Path(line.strip()) if Path(line.strip()).is_absolute() else p.parent / line.strip()
                      for line in p.read_text().splitlines() if line.strip()]
        else:
            raise UserError(f"split '{split}' points at {p}, which does not exist")
    return files


def from_yaml(path: str | Path, split: str = "val") -> DetSplit:
    """A split of an Ultralytics data set, its YOLO labels turned into COCO ground truth."""
    from ultralytics.data.utils import img2label_paths

    data = dataset_yaml(path)
    images = split_images(data, split)
    names = {int(k): v for k, v in data["names"].items()}
    categories = [{"id": i + 1, "name": n} for i, n in sorted(names.items())]
    coco_images, anns = [], []
    for i, (img, lab) in enumerate(zip(images, img2label_paths([str(p) for p in images]))):
        h, w = _image_size(img)
        coco_images.append({"id": i, "file_name": img.name, "width": w, "height": h})
        lab = Path(lab)
        rows = np.loadtxt(lab, ndmin=2) if lab.is_file() and lab.stat().st_size else np.zeros((0, 5))
        for c, xc, yc, bw, bh in rows[:, :5]:
            box = [(xc - bw / 2) * w, (yc - bh / 2) * h, bw * w, bh * h]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c) + 1, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
    coco = {"images": coco_images, "annotations": anns, "categories": categories}
    return DetSplit(images, coco, names, {i: i + 1 for i in names}, str(path))


def from_coco_json(path: str | Path, image_dir: str | Path | None, model_names: dict[int, str]) -> DetSplit:
    """A COCO annotation JSON and its image folder (default: the folder next to the JSON's parent)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    try:
        coco = json.loads(path.read_text())
        raw_images = coco["images"]
        categories = coco["categories"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{path} is not a COCO annotation file (needs images, annotations, categories)") from None
    folder = Path(image_dir) if image_dir else path.parent.parent / "images" / path.stem.removeprefix("instances_")
    if not folder.is_dir():
        raise UserError(f"image folder not found: {folder} (pass it with --images)")
    ordered = sorted(raw_images, key=lambda im: im["file_name"])
    new_id = {im["id"]: k for k, im in enumerate(ordered)}
    images = [folder / im["file_name"] for im in ordered]
    anns = [{**a, "image_id": new_id[a["image_id"]]} for a in coco.get("annotations", []) if a["image_id"] in new_id]
    gt = {"images": [{**im, "id": new_id[im["id"]]} for im in ordered], "annotations": anns, "categories": categories}
    return DetSplit(images, gt, dict(model_names), _category_map(model_names, categories), str(path))


def load_split(data: str | Path, split: str, model_names: dict[int, str], image_dir: str | None = None) -> DetSplit:
    """A split from a dataset YAML or a COCO JSON; the class names must match the model's."""
    if str(data).endswith(".json"):
        return from_coco_json(data, image_dir, model_names)
    det = from_yaml(data, split)
    if len(det.names) != len(model_names):
        raise UserError(f"class mismatch: the model has {len(model_names)} classes, {data} has {len(det.names)}")
    return det


def take_slice(det: DetSplit, n: int | None, seed: int | None = None, exclude: set[int] | None = None) -> list[int]:
    """Indices of `n` images: the first n (or a seeded random n), skipping `exclude`."""
    pool = [i for i in range(len(det.images)) if not exclude or i not in exclude]
    if seed is not None:
        pool = list(np.random.default_rng(seed).permutation(pool))
    chosen = pool if n is None else pool[:n]
    if not chosen:
        raise UserError(f"the image slice of {det.source} is empty")
    return sorted(int(i) for i in chosen)


def subset(det: DetSplit, indices: list[int]) -> DetSplit:
    """The split restricted to `indices`, image ids renumbered 0..n-1."""
    new = {old: k for k, old in enumerate(indices)}
    images = [{**det.coco["images"][old], "id": k} for k, old in enumerate(indices)]
    anns = [{**a, "image_id": new[a["image_id"]]} for a in det.coco["annotations"] if a["image_id"] in new]
    return DetSplit([det.images[i] for i in indices], {**det.coco, "images": images, "annotations": anns},
                    det.names, det.class_to_category, det.source)


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the image header, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (OSError, ValueError):
        raise UserError(f"cannot read image {path}") from None
