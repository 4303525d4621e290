"""Data sources for evaluation: an Ultralytics dataset YAML or a COCO annotation JSON plus images.

Both become one `DetSplit`: image paths in a stable order, the ground truth as a COCO
dict, and the mapping from model class index to COCO category id, by name (COCO's 80
classes live in 91 ids). A model built from a YAML has no class names of its own
("0", "1", ...): its classes map by order.
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


def unnamed(model_names: dict[int, str]) -> bool:
    """True for the placeholder names of a model built from a YAML ("0", "1", ...)."""
    return all(str(n) == str(i) for i, n in model_names.items())


def category_map(model_names: dict[int, str], categories: list[dict], source: str) -> dict[int, int]:
    """{model class index: category id}, by name; by order only for a model without class names."""
    if unnamed(model_names) and len(categories) == len(model_names):
        ids = sorted(c["id"] for c in categories)
        return {i: ids[k] for k, i in enumerate(sorted(model_names))}
    by_name = {_norm(c["name"]): c["id"] for c in categories}
    missing = [n for n in model_names.values() if _norm(n) not in by_name]
    if missing:
        raise UserError(f"class mismatch: the model's class(es) {', '.join(map(repr, missing[:3]))} are not among "
                        f"the {len(categories)} classes of {source}; evaluate on data labelled with the model's "
                        f"classes")
    return {i: by_name[_norm(n)] for i, n in model_names.items()}


def check_classes(model_names: dict[int, str], data: str | Path) -> None:
    """Refuse training or evaluating on a dataset YAML whose classes are not the model's (same names, same order)."""
    names = {int(k): str(v) for k, v in dataset_yaml(data)["names"].items()}
    if len(names) != len(model_names):
        raise UserError(f"class mismatch: the model has {len(model_names)} classes, {data} has {len(names)}")
    if not unnamed(model_names) and [_norm(n) for _, n in sorted(names.items())] != \
            [_norm(n) for _, n in sorted(model_names.items())]:
        wrong = next(i for i in sorted(names) if _norm(names[i]) != _norm(model_names[i]))
        raise UserError(f"class mismatch: class {wrong} is '{model_names[wrong]}' in the model and '{names[wrong]}' "
                        f"in {data}")


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
        for c, xc, yc, bw, bh in label_boxes(Path(lab)):
            box = [(xc - bw / 2) * w, (yc - bh / 2) * h, bw * w, bh * h]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c) + 1, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
    coco = {"images": coco_images, "annotations": anns, "categories": categories}
    return DetSplit(images, coco, names, {i: i + 1 for i in names}, str(path))


def label_boxes(path: Path) -> np.ndarray:
    """(class, x centre, y centre, width, height) rows of a YOLO label file, normalised; a polygon row
    (class x1 y1 x2 y2 ...) becomes its bounding box, as Ultralytics' loader makes it."""
    rows = []
    text = path.read_text() if path.is_file() else ""
    for line in text.splitlines():
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            raise UserError(f"{path}: a label row must be numbers (class x y w h, or a polygon), got {line.strip()!r}"
                            ) from None
        if len(values) == 5:
            rows.append(values)
        elif len(values) > 5:
            xy = np.array(values[1:1 + 2 * ((len(values) - 1) // 2)]).reshape(-1, 2)
            (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
            rows.append([values[0], (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])
        elif values:
            raise UserError(f"{path}: a label row needs 5 values (class x y w h) or a polygon, got {line.strip()!r}")
    return np.array(rows).reshape(-1, 5)


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
    return DetSplit(images, gt, dict(model_names), category_map(model_names, categories, str(path)), str(path))


def load_split(data: str | Path, split: str, model_names: dict[int, str], image_dir: str | None = None) -> DetSplit:
    """A split from a dataset YAML or a COCO JSON; the class names must match the model's."""
    if str(data).endswith(".json"):
        return from_coco_json(data, image_dir, model_names)
    check_classes(model_names, data)
    return from_yaml(data, split)


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
    """(height, width) as the pixels are read (EXIF orientation applied, as OpenCV does), from the header only."""
    from PIL import Image
    from ultralytics.data.utils import exif_size

    try:
        with Image.open(path) as im:
            w, h = exif_size(im)
            return h, w
    except (OSError, ValueError):
        raise UserError(f"cannot read image {path}") from None
