"""Reading Cityscapes gtFine instance annotations into detectron2 dataset dicts.

Each object's mask is what cityscapesscripts' json2instanceImg draws for it: its polygon minus every
object drawn after it (a later polygon covers earlier ones), so the annotations agree with the
official ground truth (instanceIds.png) used by the official evaluation.

detectron2 has a loader with the same occlusion idea (`detectron2.data.datasets.cityscapes`), but we
cannot compose it: upstream's module imports a Meta-internal path since 4823082a and fails on a
plain install (detectron2 issue 5436), its per-file function is private, and it raises bare
exceptions on malformed files. What this module adds: one named error per bad file (or skip and
report), geometry repaired with shapely's make_valid, a parsed-dataset cache shared across
processes, and parsing in worker processes.
"""
import contextlib
import fcntl
import hashlib
import json
import logging
import multiprocessing as mp
import os
import pickle
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
from cityscapesscripts.helpers.labels import name2label
from detectron2.structures import BoxMode
from PIL import Image
from shapely.geometry import MultiPolygon, Polygon
from shapely.ops import unary_union
from shapely.validation import make_valid

from ..errors import CityscapesDataError
from ..utils import atomic_open, cpus_per_local_process

logger = logging.getLogger(__name__)


def cityscapes_label_ids(class_names) -> List[int]:
    """The Cityscapes label id (cityscapesscripts' labels) of each class name."""
    unknown = [n for n in class_names if n not in name2label]
    if unknown:
        raise CityscapesDataError(f"Not Cityscapes labels (cityscapesscripts' labels): {unknown}")
    return [name2label[n].id for n in class_names]


# The 8 classes of the Cityscapes instance-level benchmark (hasInstances and not ignoreInEval), in
# label-id order, which is the order detectron2 and the official scripts use.
CITYSCAPES_FRAME = (1024, 2048)  # height, width of every Cityscapes image
CITYSCAPES_THING_CLASSES = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
CITYSCAPES_THING_LABEL_IDS = cityscapes_label_ids(CITYSCAPES_THING_CLASSES)
CITYSCAPES_THING_COLORS = [list(name2label[n].color) for n in CITYSCAPES_THING_CLASSES]
CITYSCAPES_LAYOUT = (
    "{root}/leftImg8bit/{split}/<city>/<city>_<seq>_<frame>_leftImg8bit.png and "
    "{root}/gtFine/{split}/<city>/<city>_<seq>_<frame>_gtFine_polygons.json"
)
IMAGE_SUFFIX = "_leftImg8bit.png"


def cityscapes_root() -> str:
    """`$DETECTRON2_DATASETS/cityscapes`, `./datasets/cityscapes` by default (read at call time)."""
    return os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "cityscapes")


def gtfine_file(image_file: str, kind: str, gt_dir: Optional[str] = None) -> str:
    """gtFine's `kind` file ("polygons.json", "instanceIds.png", "labelIds.png") of a leftImg8bit
    image: `<gt_dir>/<city>/<stem>_gtFine_<kind>`. Without `gt_dir`, the image's split under gtFine/
    in the Cityscapes layout: <root>/leftImg8bit/<split>/<city>/ -> <root>/gtFine/<split>/."""
    city_dir, name = os.path.split(image_file)
    if not name.endswith(IMAGE_SUFFIX):
        raise CityscapesDataError(
            f"{image_file} is not named as a Cityscapes image (<city>_<seq>_<frame>{IMAGE_SUFFIX}):"
            f" its gtFine {kind} cannot be found"
        )
    if gt_dir is None:
        split_dir = os.path.dirname(city_dir)
        root = os.path.dirname(os.path.dirname(split_dir))
        gt_dir = os.path.join(root, "gtFine", os.path.basename(split_dir))
    stem = name[: -len(IMAGE_SUFFIX)]
    return os.path.join(gt_dir, os.path.basename(city_dir), f"{stem}_gtFine_{kind}")


def coco_category_ids(metadata) -> List[int]:
    """The category id of each contiguous class in COCO-format ground truth and results, as
    detectron2's convert_to_coco_dict and COCOEvaluator write them: the dataset's own ids where its
    metadata maps them (`thing_dataset_id_to_contiguous_id`), else the contiguous ids."""
    id_map = metadata.get("thing_dataset_id_to_contiguous_id")
    to_dataset_id = {v: k for k, v in id_map.items()} if id_map else {}
    return [to_dataset_id.get(i, i) for i in range(len(metadata.thing_classes))]


def thing_label_ids(metadata) -> List[int]:
    """The Cityscapes label id of each contiguous class of a dataset: from its
    `thing_dataset_id_to_contiguous_id` (ours), else from its class names (detectron2's
    cityscapes_fine_instance_seg_* have no such map)."""
    id_map = metadata.get("thing_dataset_id_to_contiguous_id")
    if not id_map:
        return cityscapes_label_ids(metadata.thing_classes)
    to_label = {v: k for k, v in id_map.items()}
    return [to_label[i] for i in range(len(metadata.thing_classes))]


@dataclass
class CityscapesFile:
    """The files of one Cityscapes image: image, polygons JSON, instanceIds PNG, and its id."""
    image_file: str
    polygons_file: str
    instance_ids_file: str
    image_id: str


def list_cityscapes_files(root: str, split: str, problems: Optional[List[str]] = None) -> List[CityscapesFile]:
    """Pairs every leftImg8bit image of `split` with its gtFine files, sorted by name.

    An image without annotation file, or an annotation file without image, raises; with a
    `problems` list it is recorded there and left out instead.
    """
    image_dir = os.path.join(root, "leftImg8bit", split)
    gt_dir = os.path.join(root, "gtFine", split)
    hint = (
        f"Expected the Cityscapes layout {CITYSCAPES_LAYOUT.format(root=root, split=split)}. "
        "Set DETECTRON2_DATASETS to the folder that contains cityscapes/ (see datasets/README.md), "
        "or make synthetic Cityscapes-format data with "
        "cityscapes_ft.data.synthetic.make_synthetic_cityscapes (datasets/make_synthetic_cityscapes.py in "
        "the repository)."
    )
    for folder in (image_dir, gt_dir):
        if not os.path.isdir(folder):
            raise CityscapesDataError(f"Cityscapes folder not found: {folder}. {hint}")
    suffix = IMAGE_SUFFIX
    files = []
    for city in sorted(os.listdir(image_dir)):
        city_dir = os.path.join(image_dir, city)
        if not os.path.isdir(city_dir):
            continue
        for name in sorted(os.listdir(city_dir)):
            if not name.endswith(suffix):
                continue
            image_file = os.path.join(city_dir, name)
            polygons = gtfine_file(image_file, "polygons.json", gt_dir)
            if not os.path.isfile(polygons):
                _report(problems, CityscapesDataError(
                    f"Annotation file missing for image {image_file}: "
                    f"expected {polygons}"
                ))
                continue
            files.append(
                CityscapesFile(
                    image_file=image_file,
                    polygons_file=polygons,
                    instance_ids_file=gtfine_file(image_file, "instanceIds.png", gt_dir),
                    image_id=name[: -len(suffix)],
                )
            )
    images = {f.polygons_file for f in files}
    for city in sorted(os.listdir(gt_dir)):
        city_dir = os.path.join(gt_dir, city)
        if os.path.isdir(city_dir):
            for name in sorted(os.listdir(city_dir)):
                path = os.path.join(city_dir, name)
                if name.endswith("_gtFine_polygons.json") and path not in images:
                    stem = name[: -len("_gtFine_polygons.json")]
                    _report(problems, CityscapesDataError(
                        f"Image missing for annotation file {path}: expected "
                        f"{os.path.join(image_dir, city, stem + suffix)}"
                    ))
    if not files:
        raise CityscapesDataError(f"No *{suffix} images under {image_dir}. {hint}")
    return files


def _report(problems: Optional[List[str]], error: CityscapesDataError):
    if problems is None:
        raise error
    problems.append(str(error))


def _as_polygon(points, json_file: str, label: str):
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
        raise CityscapesDataError(
            f"{json_file}: object '{label}' has a polygon that is not a list of at least 3 [x, y] "
            f"points: {str(points)[:80]}"
        )
    poly = Polygon(pts)
    # Annotated outlines can self-intersect; the renderer fills them anyway.
    return poly if poly.is_valid else make_valid(poly)


def _flat_polygons(geometry) -> List[List[float]]:
    """Exterior rings of the polygonal parts of `geometry`, as detectron2's flat [x0, y0, ...] lists.

    Holes are dropped: detectron2's polygon masks have no holes (the official evaluation still
    scores against instanceIds.png, where they are exact).
    """
    parts = getattr(geometry, "geoms", [geometry])
    out = []
    for part in parts:
        if isinstance(part, MultiPolygon) or hasattr(part, "geoms"):
            out.extend(_flat_polygons(part))
        elif isinstance(part, Polygon) and not part.is_empty and part.area > 0:
            coords = np.asarray(part.exterior.coords[:-1], dtype=np.float64)
            if len(coords) >= 3:
                out.append(coords.reshape(-1).tolist())
    return out


def parse_cityscapes_polygons(json_file: str, class_names=CITYSCAPES_THING_CLASSES) -> Dict:
    """One gtFine *_polygons.json -> (height, width, detectron2 annotations) with visible masks."""
    try:
        with open(json_file) as f:
            data = json.load(f)
        height, width, objects = int(data["imgHeight"]), int(data["imgWidth"]), data["objects"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CityscapesDataError(
            f"{json_file}: not a Cityscapes polygons file "
            f'({{"imgHeight", "imgWidth", "objects": [...]}} expected): {e}'
        ) from e
    class_index = {name: i for i, name in enumerate(class_names)}

    # What json2instanceImg draws, in drawing order: (label, is_group, polygon).
    drawn = []
    for obj in objects:
        if obj.get("deleted"):
            continue
        label, is_group = obj.get("label"), False
        if label not in name2label and isinstance(label, str) and label.endswith("group"):
            label, is_group = label[: -len("group")], True
        if label not in name2label:
            raise CityscapesDataError(
                f"{json_file}: unknown label '{obj.get('label')}' (not in "
                "cityscapesscripts.helpers.labels)"
            )
        if name2label[label].id < 0:
            continue  # never drawn (license plate)
        poly = _as_polygon(obj.get("polygon"), json_file, label)
        x0, y0, x1, y1 = poly.bounds
        # Cityscapes polygons lie on the image; allow a pixel of annotation slack.
        if x0 < -1 or y0 < -1 or x1 > width + 1 or y1 > height + 1:
            raise CityscapesDataError(
                f"{json_file}: object '{label}' has coordinates outside the {width}x{height} "
                f"image (bounds {x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f})"
            )
        drawn.append((label, is_group, poly))

    bounds = np.array([p.bounds if not p.is_empty else (0, 0, -1, -1) for _, _, p in drawn]).reshape(-1, 4)
    annotations = []
    for i, (label, is_group, poly) in enumerate(drawn):
        if label not in class_index or poly.is_empty:
            continue
        x0, y0, x1, y1 = bounds[i]
        later = bounds[i + 1 :]
        overlap = np.nonzero(
            (later[:, 0] <= x1) & (later[:, 2] >= x0) & (later[:, 1] <= y1) & (later[:, 3] >= y0)
        )[0]
        visible = poly
        if len(overlap):
            visible = poly.difference(unary_union([drawn[i + 1 + j][2] for j in overlap]))
        vx0, vy0, vx1, vy1 = visible.bounds if not visible.is_empty else (0, 0, 0, 0)
        if min(vx1 - vx0, vy1 - vy0) < 1.0:
            continue  # covered by later objects, or a sliver under a pixel thick: nothing to see
        segmentation = _flat_polygons(visible)
        if not segmentation:
            continue
        annotations.append(
            {
                "category_id": class_index[label],
                "iscrowd": int(is_group),
                "bbox": [
                    max(vx0, 0.0), max(vy0, 0.0), min(vx1, float(width)), min(vy1, float(height))
                ],
                "bbox_mode": BoxMode.XYXY_ABS,
                "segmentation": segmentation,
            }
        )
    return {"height": height, "width": width, "annotations": annotations}


def _check_image(image_file: str, record: Dict):
    try:
        with Image.open(image_file) as im:
            size = im.size
    except (OSError, ValueError) as e:
        raise CityscapesDataError(f"Unreadable image {image_file}: {e}") from e
    if size != (record["width"], record["height"]):
        raise CityscapesDataError(
            f"Image {image_file} is {size[0]}x{size[1]} but its annotation says "
            f"{record['width']}x{record['height']}"
        )


def _parse_one(f: CityscapesFile):
    """(record, None) or (None, message): picklable, for worker processes."""
    try:
        record = parse_cityscapes_polygons(f.polygons_file)
        _check_image(f.image_file, record)
    except CityscapesDataError as e:
        return None, str(e)
    record.update(file_name=f.image_file, image_id=f.image_id, instance_ids_file=f.instance_ids_file)
    return record, None


def load_cityscapes_ft_instances(root: str, split: str, on_bad_sample: str = "error") -> List[Dict]:
    """All images of a Cityscapes split as detectron2 dataset dicts (instance annotations).

    on_bad_sample: "error" stops at the first bad sample with a message naming its file; "skip"
    leaves bad samples out and logs how many and which.
    """
    if on_bad_sample not in ("error", "skip"):
        raise ValueError(f"on_bad_sample must be 'error' or 'skip', got '{on_bad_sample}'")
    problems = [] if on_bad_sample == "skip" else None
    files = list_cityscapes_files(root, split, problems)
    cache = _cache_path(root, split, on_bad_sample)
    fingerprint = _fingerprint(files)
    # The processes of a run on one machine load the same split at the same moment: the first
    # parses and writes the cache while the others wait on its lock, then read the cache.
    with _cache_lock(cache):
        cached = _read_cache(cache, fingerprint)
        if cached is not None:
            dicts, cached_problems = cached
            if problems is not None:
                problems.extend(p for p in cached_problems if p not in problems)
            _log_loaded(dicts, split, root, problems, "from the cache " + cache)
            return dicts
        dicts = _parse_files(files, problems)
        if not dicts:
            _log_loaded(dicts, split, root, problems, "")
            raise CityscapesDataError(f"No usable samples in the Cityscapes {split} split at {root}")
        _write_cache(cache, fingerprint, dicts, problems or [])
    _log_loaded(dicts, split, root, problems, "")
    return dicts


def _parse_files(files, problems) -> List[Dict]:
    workers = cpus_per_local_process()
    if len(files) >= 64 and workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            parsed = pool.map(_parse_one, files, chunksize=16)
    else:
        parsed = [_parse_one(f) for f in files]
    dicts = []
    for record, error in parsed:
        if error is not None:
            _report(problems, CityscapesDataError(error))
        else:
            dicts.append(record)
    return dicts


# ---- the parsed-dataset cache --------------------------------------------------------------------
# Parsing every gtFine JSON (with shapely occlusion handling) takes minutes on real Cityscapes, and
# detectron2 re-parses at every DatasetCatalog.get. The parsed dicts are kept in a pickle keyed by
# the split's path and validated by the name, size and mtime of every image and annotation file, so
# an edited, added or removed file invalidates it. CITYSCAPES_FT_CACHE_DIR sets the folder
# (default ~/.cache/cityscapes_ft); an empty value turns the cache off.
_CACHE_VERSION = 1


def _cache_path(root, split, on_bad_sample):
    folder = os.environ.get("CITYSCAPES_FT_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "cityscapes_ft"))
    if not folder:
        return None
    key = hashlib.sha1(f"{_CACHE_VERSION}|{os.path.abspath(root)}|{split}|{on_bad_sample}".encode()).hexdigest()
    return os.path.join(folder, f"{split}-{key[:16]}.pkl")


def _fingerprint(files) -> str:
    h = hashlib.sha1()
    for f in files:
        for path in (f.image_file, f.polygons_file, f.instance_ids_file):
            try:
                st = os.stat(path)
                h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{path}|missing\n".encode())
    return h.hexdigest()


@contextlib.contextmanager
def _cache_lock(path):
    """An exclusive lock on the cache entry (no-op without a cache or where locks fail)."""
    if not path:
        yield
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        lock = open(path + ".lock", "a")
    except OSError:
        yield
        return
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError:
            pass
        yield


def _read_cache(path, fingerprint):
    if not path or not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except Exception:  # a cache from another version, or damaged: rebuild it
        return None
    if data.get("fingerprint") != fingerprint:
        return None
    return data["dicts"], data["problems"]


def _write_cache(path, fingerprint, dicts, problems):
    if not path:
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_open(path, "wb") as f:
            pickle.dump({"fingerprint": fingerprint, "dicts": dicts, "problems": problems}, f,
                        protocol=pickle.HIGHEST_PROTOCOL)
    except OSError as e:
        logger.warning(f"Could not write the dataset cache {path}: {e}")


def _log_loaded(dicts, split, root, problems, source):
    if problems:
        logger.warning(
            "Skipped %d bad samples of the Cityscapes %s split at %s:\n  %s",
            len(problems), split, root, "\n  ".join(problems),
        )
    if dicts:
        logger.info(
            "Loaded %d images (%d instances) from Cityscapes %s split at %s%s",
            len(dicts), sum(len(d["annotations"]) for d in dicts), split, root,
            f" ({source})" if source else "",
        )


def load_cityscapes_images(root: str, split: str) -> List[Dict]:
    """The images of a split without annotations (the test split: its labels are not public), as
    dataset dicts for inference: file_name, image_id, height, width."""
    image_dir = os.path.join(root, "leftImg8bit", split)
    if not os.path.isdir(image_dir):
        raise CityscapesDataError(
            f"Cityscapes folder not found: {image_dir}. Expected {root}/leftImg8bit/{split}/<city>/"
            "<city>_<seq>_<frame>_leftImg8bit.png; set DETECTRON2_DATASETS to the folder that contains cityscapes/"
        )
    suffix = "_leftImg8bit.png"
    dicts = []
    for city in sorted(os.listdir(image_dir)):
        city_dir = os.path.join(image_dir, city)
        for name in sorted(os.listdir(city_dir)) if os.path.isdir(city_dir) else []:
            if name.endswith(suffix):
                path = os.path.join(city_dir, name)
                try:
                    with Image.open(path) as image:
                        width, height = image.size
                except OSError as e:
                    raise CityscapesDataError(f"Unreadable image {path}: {e}") from e
                dicts.append({"file_name": path, "image_id": name[: -len(suffix)], "height": height, "width": width})
    if not dicts:
        raise CityscapesDataError(f"No *{suffix} images in {image_dir}")
    logger.info(f"Loaded {len(dicts)} images of the Cityscapes {split} split (no annotations) from {root}")
    return dicts
