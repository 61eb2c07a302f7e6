"""Synthetic data in the exact Cityscapes gtFine format, for demos and tests.

Scenes have a road, sidewalk, buildings, vegetation and sky (stuff polygons, as in real gtFine),
then objects of all 8 instance classes, crowd groups (``cargroup``, ``persongroup``, ...), the
classes that have instances but are ignored in evaluation (caravan, trailer), objects occluding
each other (drawn far to near, as annotators do) and objects cut by the image border. Each class
has its own outline and colour family, so a small model can learn them in minutes on a CPU.

The polygons JSON is written first; instanceIds, labelIds and color PNGs are then made from it by
cityscapesscripts' own converters, exactly as for real Cityscapes.
"""
import argparse
import json
import os
import time
from typing import List, Tuple

import numpy as np
from cityscapesscripts.preparation.json2instanceImg import json2instanceImg
from cityscapesscripts.preparation.json2labelImg import json2labelImg
from PIL import Image, ImageDraw
from shapely.geometry import Polygon, box

from .cityscapes import CITYSCAPES_THING_CLASSES
from .foggy import make_foggy_copy

SPLIT_CITIES = {"train": ["aachen", "bochum"], "val": ["frankfurt", "lindau"], "test": ["berlin"]}

# Colour family of each drawn label (RGB); objects get a jittered variant.
_LABEL_COLORS = {
    "road": (110, 100, 110),
    "sidewalk": (190, 170, 180),
    "building": (120, 120, 110),
    "vegetation": (80, 140, 40),
    "sky": (140, 180, 230),
    "person": (230, 60, 60),
    "rider": (250, 150, 30),
    "car": (30, 40, 200),
    "truck": (20, 170, 170),
    "bus": (240, 220, 40),
    "train": (150, 60, 200),
    "motorcycle": (20, 20, 20),
    "bicycle": (250, 250, 250),
    "caravan": (200, 120, 200),
    "trailer": (120, 80, 40),
}

# Object height as a fraction of image height at the nearest depth, and aspect (width / height).
_SIZE = {
    "person": (0.30, 0.40),
    "rider": (0.28, 0.45),
    "car": (0.20, 2.0),
    "truck": (0.32, 1.7),
    "bus": (0.36, 2.4),
    "train": (0.34, 3.5),
    "motorcycle": (0.15, 1.5),
    "bicycle": (0.15, 1.6),
    "caravan": (0.26, 1.8),
    "trailer": (0.18, 2.2),
}


def _outline(label: str, cx: float, bottom: float, h: float) -> List[Tuple[float, float]]:
    """A class-specific outline with its bottom centre at (cx, bottom) and height h."""
    w = h * _SIZE[label][1]
    x0, x1, top = cx - w / 2, cx + w / 2, bottom - h
    if label in ("person", "rider"):
        head = h * 0.16
        return [
            (cx - w * 0.12, top), (cx + w * 0.12, top), (cx + w * 0.16, top + head),
            (x1, top + h * 0.25), (cx + w * 0.35, top + h * 0.6), (cx + w * 0.25, bottom),
            (cx + w * 0.05, bottom), (cx, top + h * 0.65), (cx - w * 0.05, bottom),
            (cx - w * 0.25, bottom), (cx - w * 0.35, top + h * 0.6), (x0, top + h * 0.25),
            (cx - w * 0.16, top + head),
        ]
    if label == "car":
        return [
            (x0, bottom), (x0, top + h * 0.45), (x0 + w * 0.2, top + h * 0.4),
            (x0 + w * 0.3, top), (x1 - w * 0.3, top), (x1 - w * 0.15, top + h * 0.4),
            (x1, top + h * 0.5), (x1, bottom),
        ]
    if label == "truck":
        return [
            (x0, bottom), (x0, top), (x1 - w * 0.3, top), (x1 - w * 0.3, top + h * 0.3),
            (x1 - w * 0.05, top + h * 0.35), (x1, top + h * 0.6), (x1, bottom),
        ]
    if label in ("bus", "caravan", "trailer"):
        r = h * 0.08
        return [(x0, bottom), (x0, top + r), (x0 + r, top), (x1 - r, top), (x1, top + r), (x1, bottom)]
    if label == "train":
        return [(x0, bottom), (x0, top), (x1 - w * 0.08, top), (x1, top + h * 0.3), (x1, bottom)]
    if label in ("motorcycle", "bicycle"):
        # Two wheels joined by a frame that peaks at the handlebar: bottom of the left wheel, round
        # its left and top, up to the frame, down over the right wheel, back along the bottom.
        r = h * (0.27 if label == "bicycle" else 0.3)
        wy = bottom - r
        left = [(x0 + r + r * np.cos(a), wy + r * np.sin(a)) for a in np.radians(np.arange(90, 331, 30))]
        right = [(x1 - r + r * np.cos(a), wy + r * np.sin(a)) for a in np.radians(np.arange(210, 451, 30))]
        return left + [(cx - w * 0.1, top), (cx + w * 0.1, top)] + right
    raise KeyError(label)


def _clip(points, width: int, height: int) -> List[List[float]]:
    """The outline cut by the image border, as Cityscapes polygons are (inside [0, W-1] x [0, H-1])."""
    poly = Polygon(points)
    if not poly.is_valid:
        poly = poly.buffer(0)
    cut = poly.intersection(box(0, 0, width - 1, height - 1))
    if cut.is_empty:
        return []
    if cut.geom_type != "Polygon":
        cut = max(getattr(cut, "geoms", [cut]), key=lambda g: g.area)
        if cut.geom_type != "Polygon":
            return []
    return [[round(x, 1), round(y, 1)] for x, y in list(cut.exterior.coords)[:-1]]


def _densify(polygon, detail: int, rng) -> List[List[float]]:
    """Adds `detail` slightly jittered points along each edge, for outlines as detailed as real
    gtFine ones (hundreds of vertices), which is what makes parsing annotations slow."""
    if detail <= 0:
        return polygon
    pts = np.asarray(polygon, dtype=np.float64)
    out = []
    for a, b in zip(pts, np.roll(pts, -1, axis=0)):
        out.append(a)
        for t in np.arange(1, detail + 1) / (detail + 1):
            out.append(a + (b - a) * t + rng.uniform(-0.4, 0.4, 2))
    out = np.round(np.asarray(out), 1)
    return out.tolist()


def _jitter(rng, color, amount=25):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in color)


def make_scene(rng: np.random.Generator, width: int, height: int, detail: int = 0, rare_classes=(),
               rare_rate: float = 0.05):
    """One scene: (objects in drawing order, [(label, polygon, color)])."""
    horizon = height * rng.uniform(0.38, 0.48)
    objects = []

    def add(label, points, color=None):
        polygon = _clip(points, width, height)
        if len(polygon) >= 3 and detail:
            dense = _densify(polygon, detail, rng)
            polygon = dense if Polygon(dense).is_valid else polygon
            polygon = [[min(max(x, 0.0), width - 1.0), min(max(y, 0.0), height - 1.0)] for x, y in polygon]
        if len(polygon) >= 3:
            objects.append((label, polygon, color or _jitter(rng, _LABEL_COLORS[label])))

    add("sky", [(0, 0), (width, 0), (width, horizon), (0, horizon)])
    x = -rng.uniform(0, width * 0.1)
    while x < width:
        bw = width * rng.uniform(0.1, 0.25)
        top = horizon - height * rng.uniform(0.1, 0.35)
        add(rng.choice(["building", "vegetation"]), [(x, top), (x + bw, top), (x + bw, horizon + 2), (x, horizon + 2)])
        x += bw
    add("sidewalk", [(0, horizon), (width, horizon), (width, height), (0, height)])
    road_top = horizon + height * 0.02
    add("road", [(width * 0.25, road_top), (width * 0.75, road_top), (width, height * 0.9), (width, height), (0, height), (0, height * 0.9)])

    # Objects: sample depths, draw far (small, near the horizon) to near (big, low in the image).
    things = list(CITYSCAPES_THING_CLASSES)
    if rare_classes:  # each rare class in about `rare_rate` of the images, the others as usual
        common = [t for t in things if t not in rare_classes]
        kinds = list(rng.choice(common, size=int(rng.integers(4, 9))))
        kinds += [t for t in rare_classes if rng.random() < rare_rate]
    else:
        kinds = list(rng.choice(things, size=int(rng.integers(4, 9))))
        kinds += [t for t in things if rng.random() < 0.15]
    if rng.random() < 0.3:
        kinds.append(str(rng.choice(["caravan", "trailer"])))
    groups = ["persongroup", "cargroup", "bicyclegroup"] if rng.random() < 0.35 else []
    items = [(rng.uniform(0.25, 1.0), str(k)) for k in kinds] + [(rng.uniform(0.2, 0.5), g) for g in groups]
    for depth, kind in sorted(items):
        bottom = horizon + (height - horizon) * depth * rng.uniform(0.9, 1.05)
        cx = rng.uniform(-0.05, 1.05) * width  # some objects are cut by the border
        if kind.endswith("group"):
            base = kind[: -len("group")]
            members = [
                _outline(base, cx + i * height * _SIZE[base][0] * depth * _SIZE[base][1] * 0.6,
                         bottom - rng.uniform(0, 4), height * _SIZE[base][0] * depth)
                for i in range(int(rng.integers(3, 6)))
            ]
            hull = Polygon([p for m in members for p in m]).convex_hull
            add(kind, list(hull.exterior.coords)[:-1], _jitter(rng, _LABEL_COLORS[base]))
            continue
        h = height * _SIZE[kind][0] * depth * rng.uniform(0.85, 1.15)
        if kind == "rider":  # a rider sits on a bicycle or motorcycle, which it partly covers
            vehicle = str(rng.choice(["bicycle", "motorcycle"]))
            add(vehicle, _outline(vehicle, cx, bottom, h * 0.55))
            add("rider", _outline("rider", cx, bottom - h * 0.25, h * 0.8))
        else:
            add(kind, _outline(kind, cx, bottom, h))
    return objects


def render_scene(rng, objects, width: int, height: int) -> Image.Image:
    """Paints the objects in drawing order, so the pixels agree with the annotation."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for label, polygon, color in objects:
        pts = [tuple(p) for p in polygon]
        draw.polygon(pts, fill=color)
        if label not in ("sky", "road", "sidewalk", "building", "vegetation"):
            draw.line(pts + [pts[0]], fill=tuple(int(c * 0.6) for c in color), width=max(1, width // 512))
    pixels = np.asarray(image, dtype=np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_split(root: str, split: str, num_images: int, width: int, height: int, seed: int, log=print,
                detail: int = 0, rare_classes=(), rare_rate: float = 0.05):
    """Writes `num_images` scenes of one split: images, polygons JSON, and the instance, label and
    colour PNGs made from it by cityscapesscripts' own converters."""
    cities = SPLIT_CITIES[split]
    rng = np.random.default_rng([seed, sorted(SPLIT_CITIES).index(split)])
    start = time.perf_counter()
    for i in range(num_images):
        city = cities[i % len(cities)]
        stem = f"{city}_{i // len(cities):06d}_000019"
        img_dir = os.path.join(root, "leftImg8bit", split, city)
        gt_dir = os.path.join(root, "gtFine", split, city)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(gt_dir, exist_ok=True)
        objects = make_scene(rng, width, height, detail, rare_classes, rare_rate)
        render_scene(rng, objects, width, height).save(os.path.join(img_dir, stem + "_leftImg8bit.png"))
        gt = os.path.join(gt_dir, stem + "_gtFine_")
        with open(gt + "polygons.json", "w") as f:
            json.dump(
                {
                    "imgHeight": height,
                    "imgWidth": width,
                    "objects": [{"label": label, "polygon": poly} for label, poly, _ in objects],
                },
                f,
            )
        json2instanceImg(gt + "polygons.json", gt + "instanceIds.png", "ids")
        json2labelImg(gt + "polygons.json", gt + "labelIds.png", "ids")
        json2labelImg(gt + "polygons.json", gt + "color.png", "color")
        done = i + 1
        if done == num_images or done % max(1, num_images // 10) == 0:
            rate = (time.perf_counter() - start) / done
            log(f"[synthetic] {split}: {done}/{num_images} images, ETA {rate * (num_images - done):.0f}s")


def make_synthetic_cityscapes(root: str, num_train: int = 24, num_val: int = 8, width: int = 2048,
                              height: int = 1024, seed: int = 0, log=print, detail: int = 0,
                              rare_train_classes=(), rare_rate: float = 0.05) -> str:
    """Writes a synthetic Cityscapes tree under `root` (the folder that holds leftImg8bit/, gtFine/).
    rare_train_classes: classes that appear in only about `rare_rate` of the training images (the
    val split keeps every class common), as train, bus and truck are rare in Cityscapes."""
    for split, n in (("train", num_train), ("val", num_val)):
        if n > 0:
            rare = tuple(rare_train_classes) if split == "train" else ()
            write_split(root, split, n, width, height, seed, log, detail, rare, rare_rate)
    with open(os.path.join(root, "SYNTHETIC.json"), "w") as f:
        spec = {"num_train": num_train, "num_val": num_val, "width": width, "height": height, "seed": seed}
        if detail:
            spec["detail"] = detail
        if rare_train_classes:
            spec.update(rare_train_classes=list(rare_train_classes), rare_rate=rare_rate)
        json.dump(spec, f)
    return root


def synthetic_dataset_matches(root: str, **spec) -> bool:
    """True if `root` already holds a complete synthetic dataset made with these arguments."""
    try:
        with open(os.path.join(root, "SYNTHETIC.json")) as f:
            return json.load(f) == spec
    except (OSError, ValueError):
        return False


def main(argv=None):
    """The command line of datasets/make_synthetic_cityscapes.py."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="datasets/synthetic/cityscapes",
                        help="folder to hold leftImg8bit/ and gtFine/ (point DETECTRON2_DATASETS "
                        "at its parent)")
    parser.add_argument("--num-train", type=int, default=24)
    parser.add_argument("--num-val", type=int, default=8)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detail", type=int, default=0,
                        help="extra points per polygon edge (real gtFine outlines are detailed)")
    parser.add_argument("--foggy", action="store_true",
                        help="also write a Foggy Cityscapes copy of the val images (leftImg8bit_foggy/)")
    args = parser.parse_args(argv)
    if args.width < 64 or args.height < 32:
        parser.error("--width must be at least 64 and --height at least 32")
    make_synthetic_cityscapes(args.output, args.num_train, args.num_val, args.width, args.height, args.seed,
                              detail=args.detail)
    if args.foggy:
        make_foggy_copy(args.output, "val")
    print(f"Wrote synthetic Cityscapes to {args.output}; use it with "
          f"DETECTRON2_DATASETS={os.path.dirname(os.path.abspath(args.output))}")


if __name__ == "__main__":
    main()
