import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, Instances
from PIL import Image

from cityscapes_ft.evaluation import CityscapesInstanceSegEvaluator

LABEL_IDS = [24, 25, 26, 27, 28, 31, 32, 33]


def perfect_predictions(d, drop_class=None):
    """The official ground truth instances of an image, as a model's output."""
    ids = np.asarray(Image.open(d["instance_ids_file"]))
    masks, classes = [], []
    for i in np.unique(ids):
        if i >= 1000 and i // 1000 in LABEL_IDS and LABEL_IDS.index(i // 1000) != drop_class:
            masks.append(ids == i)
            classes.append(LABEL_IDS.index(i // 1000))
    inst = Instances(ids.shape)
    masks = torch.as_tensor(np.stack(masks)) if masks else torch.zeros((0,) + ids.shape, dtype=torch.bool)
    inst.pred_masks = masks
    boxes = []
    for m in masks.numpy():
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.linspace(0.99, 0.5, len(masks))
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return {"instances": inst}


def polygon_predictions(d):
    """The loader's own (non-crowd) annotations, rasterised as COCO does, as a model's output."""
    anns = [a for a in d["annotations"] if not a["iscrowd"]]
    h, w = d["height"], d["width"]
    inst = Instances((h, w))
    masks = [mask_util.decode(mask_util.merge(mask_util.frPyObjects(a["segmentation"], h, w))) for a in anns]
    inst.pred_masks = torch.as_tensor(np.stack(masks).astype(bool))
    inst.pred_boxes = Boxes(torch.tensor([a["bbox"] for a in anns], dtype=torch.float32))
    inst.scores = torch.linspace(0.99, 0.5, len(anns))
    inst.pred_classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
    return {"instances": inst}


def evaluate(dicts, outputs, tmp_path, tasks=("cityscapes", "bbox", "segm")):
    ev = CityscapesInstanceSegEvaluator("cityscapes_ft_instance_val", str(tmp_path), tasks=tasks)
    ev.reset()
    for d, o in zip(dicts, outputs):
        ev.process([{"file_name": d["file_name"], "image_id": d["image_id"]}], [o])
    return ev.evaluate()


def test_ground_truth_as_predictions_scores_100(cityscapes_env, tmp_path):
    dicts = DatasetCatalog.get("cityscapes_ft_instance_val")
    res = evaluate(dicts, [perfect_predictions(d) for d in dicts], tmp_path)
    assert res["cityscapes"]["AP"] == pytest.approx(100.0)
    assert res["cityscapes"]["AP50"] == pytest.approx(100.0)
    for name in ("person", "car"):
        assert f"AP-{name}" in res["segm"] and f"AP-{name}" in res["cityscapes"]
    # files stay in the output directory (cityscapesscripts' matches.json and gt cache included)
    assert os.path.isfile(tmp_path / "cityscapes_official" / "resultInstanceLevelSemanticLabeling.json")
    assert os.path.isfile(tmp_path / "instances_predictions.json")
    assert not os.path.exists("matches.json")


def test_annotations_as_predictions_score_100_coco_ap(cityscapes_env, tmp_path):
    dicts = DatasetCatalog.get("cityscapes_ft_instance_val")
    res = evaluate(dicts, [polygon_predictions(d) for d in dicts], tmp_path, tasks=("bbox", "segm"))
    assert set(res) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert res[task]["AP"] == pytest.approx(100.0)
        assert res[task]["AP50"] == pytest.approx(100.0)
    assert res["segm"]["AP-car"] == pytest.approx(100.0)


def test_missing_class_lowers_only_that_class(cityscapes_env, tmp_path):
    dicts = DatasetCatalog.get("cityscapes_ft_instance_val")
    res = evaluate(dicts, [perfect_predictions(d, drop_class=2) for d in dicts], tmp_path)
    assert res["cityscapes"]["AP-car"] == 0.0
    assert res["cityscapes"]["AP-bus"] == pytest.approx(100.0)
    assert res["cityscapes"]["AP"] < 100.0
    assert res["segm"]["AP-car"] == 0.0


def test_no_predictions_at_all(cityscapes_env, tmp_path):
    dicts = DatasetCatalog.get("cityscapes_ft_instance_val")
    empty = []
    for d in dicts:
        inst = Instances((d["height"], d["width"]))
        inst.pred_masks = torch.zeros((0, d["height"], d["width"]), dtype=torch.bool)
        inst.pred_boxes = Boxes(torch.zeros((0, 4)))
        inst.scores = torch.zeros(0)
        inst.pred_classes = torch.zeros(0, dtype=torch.int64)
        empty.append({"instances": inst})
    res = evaluate(dicts, empty, tmp_path)
    assert res["cityscapes"]["AP"] == 0.0
    assert res["bbox"]["AP"] == 0.0 and res["segm"]["AP"] == 0.0


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="EVAL_TASKS"):
        CityscapesInstanceSegEvaluator("cityscapes_ft_instance_val", "/tmp", tasks=("keypoints",))
