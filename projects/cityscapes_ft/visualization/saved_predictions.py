"""Predictions that an evaluation saved drawn beside the ground truth: our
instances_predictions.json, or detectron2's coco_instances_results.json (COCOEvaluator's format,
which our evaluator writes too)."""
import json
import os
from typing import List

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.structures import Boxes, Instances
from PIL import Image

from ..data.cityscapes import coco_category_ids
from ..errors import CityscapesFTError
from .drawing import draw_ground_truth, draw_instances


def saved_to_instances(pred, height, width) -> Instances:
    """One image's record of instances_predictions.json as detectron2 Instances."""
    inst = Instances((height, width))
    inst.pred_boxes = Boxes(torch.tensor(pred["boxes"], dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(pred["scores"], dtype=torch.float32)
    inst.pred_classes = torch.tensor(pred["classes"], dtype=torch.int64)
    if pred["masks"]:
        masks = np.stack([mask_util.decode(m) for m in pred["masks"]]).astype(bool)
        inst.pred_masks = torch.from_numpy(masks)
    return inst


def _coco_results_by_file(results, dataset, metadata, source):
    """detectron2's COCO results (one record per instance, XYWH boxes, dataset category ids) as our
    per-image records, for every image of the dataset (empty where it has none)."""
    to_contiguous = {cid: i for i, cid in enumerate(coco_category_ids(metadata))}
    by_image = {d.get("image_id"): {"file_name": d["file_name"], "boxes": [], "scores": [], "classes": [],
                                    "masks": []} for d in dataset}
    for r in results:
        pred = by_image.get(r["image_id"])
        if pred is None:
            raise CityscapesFTError(f"{source} has predictions for image_id {r['image_id']!r}, which is not "
                                    "in the dataset (is DETECTRON2_DATASETS the one it was evaluated on?)")
        if r["category_id"] not in to_contiguous:
            raise CityscapesFTError(f"{source}: category_id {r['category_id']} is not one of the dataset's "
                                    f"{sorted(to_contiguous)}")
        x, y, w, h = r["bbox"]
        pred["boxes"].append([x, y, x + w, y + h])
        pred["scores"].append(r["score"])
        pred["classes"].append(to_contiguous[r["category_id"]])
        if "segmentation" in r:
            pred["masks"].append(r["segmentation"])
    for pred in by_image.values():
        if pred["masks"] and len(pred["masks"]) != len(pred["scores"]):
            raise CityscapesFTError(f"{source}: some records of {pred['file_name']} have masks and some not")
    return list(by_image.values())


def load_saved_predictions(path, dataset_name):
    """Per-image records (file_name, XYXY boxes, scores, contiguous classes, RLE masks) from our
    instances_predictions.json or detectron2's coco_instances_results.json."""
    try:
        with open(path) as f:
            predictions = json.load(f)
    except (OSError, ValueError) as e:
        raise CityscapesFTError(
            f"Cannot read saved predictions {path}: {e}. They are written by an evaluation to "
            "OUTPUT_DIR/inference/<dataset>/instances_predictions.json (and coco_instances_results.json)"
        ) from e
    ours = {"file_name", "boxes", "scores", "classes", "masks"}
    coco = {"image_id", "category_id", "bbox", "score"}
    if not isinstance(predictions, list) or not all(isinstance(p, dict) for p in predictions):
        raise CityscapesFTError(f"{path}: expected a JSON list of prediction records")
    if all(ours <= set(p) for p in predictions):
        return predictions
    if all(coco <= set(p) for p in predictions):
        return _coco_results_by_file(predictions, DatasetCatalog.get(dataset_name), MetadataCatalog.get(dataset_name),
                                     path)
    raise CityscapesFTError(
        f"{path}: records are neither ours (keys {sorted(ours)}) nor detectron2's COCO results "
        f"(keys {sorted(coco)}, plus segmentation)")


def draw_saved_predictions(predictions_json: str, dataset_name: str, output_dir: str,
                           score_thresh: float = 0.5, num_images: int = 0) -> List[str]:
    """Writes `<stem>_pred_gt.png` (predictions left, ground truth right) per image."""
    predictions = load_saved_predictions(predictions_json, dataset_name)
    dataset = {d["file_name"]: d for d in DatasetCatalog.get(dataset_name)}
    metadata = MetadataCatalog.get(dataset_name)
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for pred in predictions[: num_images or None]:
        d = dataset.get(pred["file_name"])
        if d is None:
            raise CityscapesFTError(
                f"{predictions_json} has predictions for {pred['file_name']}, which is not in "
                f"dataset '{dataset_name}' (is DETECTRON2_DATASETS the one it was evaluated on?)"
            )
        rgb = utils.read_image(d["file_name"], format="RGB")
        inst = saved_to_instances(pred, d["height"], d["width"])
        picture = np.concatenate(
            [draw_instances(rgb, inst, metadata, score_thresh), draw_ground_truth(rgb, d, metadata)], axis=1
        )
        out = os.path.join(output_dir, os.path.basename(d["file_name"]).replace("_leftImg8bit.png", "_pred_gt.png"))
        Image.fromarray(picture).save(out)
        written.append(out)
    return written
