"""Predictions that an evaluation saved (instances_predictions.json) drawn beside the ground truth."""
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


def draw_saved_predictions(predictions_json: str, dataset_name: str, output_dir: str,
                           score_thresh: float = 0.5, num_images: int = 0) -> List[str]:
    """Writes `<stem>_pred_gt.png` (predictions left, ground truth right) per image."""
    try:
        with open(predictions_json) as f:
            predictions = json.load(f)
    except (OSError, ValueError) as e:
        raise CityscapesFTError(
            f"Cannot read saved predictions {predictions_json}: {e}. They are written by an "
            "evaluation to OUTPUT_DIR/inference/<dataset>/instances_predictions.json"
        ) from e
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
