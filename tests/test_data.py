import glob
import json
import os

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import name2label
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image, ImageDraw
from shapely.geometry import Polygon

import cityscapes_ft  # noqa: F401  registers the datasets
from cityscapes_ft.data import CityscapesDataError, load_cityscapes_ft_instances
from cityscapes_ft.data.synthetic import make_synthetic_cityscapes

CLASSES = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]


def rasterize(segmentation, height, width):
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in segmentation:
        draw.polygon([tuple(p) for p in np.asarray(poly).reshape(-1, 2)], fill=1)
    return np.asarray(canvas, dtype=bool)


def test_registration_and_metadata():
    for name, split in [("cityscapes_ft_instance_train", "train"), ("cityscapes_ft_instance_val", "val")]:
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == CLASSES
        assert [tuple(c) for c in meta.thing_colors] == [name2label[c].color for c in CLASSES]
        assert meta.thing_dataset_id_to_contiguous_id == {24: 0, 25: 1, 26: 2, 27: 3, 28: 4, 31: 5, 32: 6, 33: 7}
        assert meta.evaluator_type == "cityscapes_ft_instance"
        assert meta.split == split
    # detectron2's own builtin names stay registered and untouched
    assert "cityscapes_fine_instance_seg_train" in DatasetCatalog.list()


def test_loader_reads_the_split_named_by_detectron2_datasets(cityscapes_env):
    dicts = DatasetCatalog.get("cityscapes_ft_instance_val")
    assert len(dicts) == 6
    d = dicts[0]
    assert d["file_name"].startswith(os.path.join(cityscapes_env, "cityscapes", "leftImg8bit", "val"))
    assert (d["height"], d["width"]) == (128, 256)
    assert d["image_id"] + "_leftImg8bit.png" == os.path.basename(d["file_name"])
    assert os.path.isfile(d["instance_ids_file"])


def test_visible_masks_agree_with_official_instance_ids(tmp_path):
    """Each non-crowd annotation's polygons cover what json2instanceImg drew for that instance."""
    make_synthetic_cityscapes(str(tmp_path), 4, 0, 768, 384, seed=5, log=lambda *_: None)
    dicts = load_cityscapes_ft_instances(str(tmp_path), "train")
    checked = 0
    for d in dicts:
        ids = np.asarray(Image.open(d["instance_ids_file"]))
        official = {i: ids == i for i in np.unique(ids) if i >= 1000 and i // 1000 in (24, 25, 26, 27, 28, 31, 32, 33)}
        for ann in d["annotations"]:
            if ann["iscrowd"]:
                continue
            mask = rasterize(ann["segmentation"], d["height"], d["width"])
            x0, y0, x1, y1 = ann["bbox"]
            if mask.sum() < 200 or min(x1 - x0, y1 - y0) < 5:
                continue  # a sliver: a pixel of rasterisation at its edges dominates its IoU
            label_id = [24, 25, 26, 27, 28, 31, 32, 33][ann["category_id"]]
            ious = [
                (m & mask).sum() / (m | mask).sum() for i, m in official.items() if i // 1000 == label_id
            ]
            assert ious and max(ious) > 0.8, (d["file_name"], ann["category_id"], ious)
            checked += 1
        # every official instance of the 8 classes is annotated
        assert len([a for a in d["annotations"] if not a["iscrowd"]]) >= len(
            [i for i, m in official.items() if m.sum() >= 20]
        )
    assert checked > 15


def test_synthetic_data_has_everything_the_issue_asks_for(synthetic_root):
    root = os.path.join(synthetic_root, "cityscapes")
    labels, border_cut, occluded = set(), 0, 0
    jsons = sorted(glob.glob(os.path.join(root, "gtFine", "*", "*", "*_gtFine_polygons.json")))
    assert len(jsons) == 14
    for path in jsons:
        stem = path[: -len("_gtFine_polygons.json")]
        for suffix in ("instanceIds.png", "labelIds.png", "color.png"):
            assert os.path.isfile(f"{stem}_gtFine_{suffix}")
        image = stem.replace("gtFine", "leftImg8bit", 1) + "_leftImg8bit.png"
        assert os.path.isfile(image) and Image.open(image).size == (256, 128)
        data = json.load(open(path))
        assert (data["imgWidth"], data["imgHeight"]) == (256, 128)
        for obj in data["objects"]:
            labels.add(obj["label"])
            pts = np.asarray(obj["polygon"])
            if obj["label"] in CLASSES and (pts[:, 0].min() <= 0 or pts[:, 0].max() >= 255):
                border_cut += 1
        things = [Polygon(o["polygon"]).buffer(0) for o in data["objects"] if o["label"] in CLASSES]
        occluded += sum(a.intersection(b).area > 1 for i, a in enumerate(things) for b in things[i + 1 :])
    assert set(CLASSES) <= labels
    assert {"caravan", "trailer"} & labels
    assert any(label.endswith("group") for label in labels)
    assert border_cut > 0
    assert occluded > 0
    # labelIds come from the official converter: they hold the label ids of what was drawn
    label_ids = np.asarray(Image.open(jsons[0].replace("polygons.json", "labelIds.png")))
    assert set(np.unique(label_ids)) <= {l.id for l in name2label.values()}


def test_crowd_groups_are_crowd_and_ignored_classes_are_left_out(synthetic_root):
    dicts = load_cityscapes_ft_instances(os.path.join(synthetic_root, "cityscapes"), "train")
    dicts += load_cityscapes_ft_instances(os.path.join(synthetic_root, "cityscapes"), "val")
    crowd = [a for d in dicts for a in d["annotations"] if a["iscrowd"]]
    assert crowd, "the fixture should contain a *group object"
    assert all(0 <= a["category_id"] < 8 for d in dicts for a in d["annotations"])


def test_synthetic_generator_is_seeded(tmp_path):
    a = make_synthetic_cityscapes(str(tmp_path / "a"), 2, 0, 128, 64, seed=7, log=lambda *_: None)
    b = make_synthetic_cityscapes(str(tmp_path / "b"), 2, 0, 128, 64, seed=7, log=lambda *_: None)
    c = make_synthetic_cityscapes(str(tmp_path / "c"), 2, 0, 128, 64, seed=8, log=lambda *_: None)
    rel = "gtFine/train/aachen/aachen_000000_000019_gtFine_polygons.json"
    assert open(os.path.join(a, rel)).read() == open(os.path.join(b, rel)).read()
    assert open(os.path.join(a, rel)).read() != open(os.path.join(c, rel)).read()


def test_missing_dataset_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with pytest.raises(CityscapesDataError) as e:
        DatasetCatalog.get("cityscapes_ft_instance_train")
    msg = str(e.value)
    expected_path = os.path.join(str(tmp_path), "cityscapes", "leftImg8bit", "train")
    assert expected_path in msg and "DETECTRON2_DATASETS" in msg and "gtFine" in msg


def test_empty_split_is_one_clear_error(tmp_path):
    (tmp_path / "leftImg8bit" / "val" / "lindau").mkdir(parents=True)
    (tmp_path / "gtFine" / "val").mkdir(parents=True)
    with pytest.raises(CityscapesDataError, match="No \\*_leftImg8bit.png images under"):
        load_cityscapes_ft_instances(str(tmp_path), "val")


def test_image_without_annotation_is_named(tmp_path):
    make_synthetic_cityscapes(str(tmp_path), 0, 2, 128, 64, seed=1, log=lambda *_: None)
    victim = sorted(glob.glob(str(tmp_path / "gtFine/val/*/*_polygons.json")))[0]
    os.remove(victim)
    with pytest.raises(CityscapesDataError, match=os.path.basename(victim)):
        load_cityscapes_ft_instances(str(tmp_path), "val")


def test_parsed_split_is_cached_and_invalidated_by_edits(tmp_path, monkeypatch):
    from cityscapes_ft.data import cityscapes as loader

    monkeypatch.setenv("CITYSCAPES_FT_CACHE_DIR", str(tmp_path / "cache"))
    make_synthetic_cityscapes(str(tmp_path / "cs"), 3, 0, 128, 64, seed=2, log=lambda *_: None)
    first = load_cityscapes_ft_instances(str(tmp_path / "cs"), "train")
    assert len([f for f in os.listdir(tmp_path / "cache") if f.endswith(".pkl")]) == 1

    def no_parsing(*a, **k):
        raise AssertionError("parsed again although nothing changed")

    monkeypatch.setattr(loader, "parse_cityscapes_polygons", no_parsing)
    again = load_cityscapes_ft_instances(str(tmp_path / "cs"), "train")
    assert again == first
    monkeypatch.undo()
    monkeypatch.setenv("CITYSCAPES_FT_CACHE_DIR", str(tmp_path / "cache"))
    # an edited annotation file invalidates the cache
    path = sorted(glob.glob(str(tmp_path / "cs" / "gtFine" / "train" / "*" / "*_polygons.json")))[0]
    data = json.load(open(path))
    data["objects"] = [o for o in data["objects"] if o["label"] not in CLASSES]
    json.dump(data, open(path, "w"))
    edited = load_cityscapes_ft_instances(str(tmp_path / "cs"), "train")
    changed = next(d for d in edited if d["image_id"] in path)
    assert changed["annotations"] == []
    # and an empty CITYSCAPES_FT_CACHE_DIR turns the cache off
    monkeypatch.setenv("CITYSCAPES_FT_CACHE_DIR", "")
    monkeypatch.setattr(loader, "parse_cityscapes_polygons", no_parsing)
    with pytest.raises(AssertionError, match="parsed again"):
        load_cityscapes_ft_instances(str(tmp_path / "cs"), "train")
