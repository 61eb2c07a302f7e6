"""Drawing predictions and ground truth with detectron2's Visualizer in the Cityscapes colours."""
import os
from typing import List

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image


class InstancePredictor(DefaultPredictor):
    """detectron2's DefaultPredictor (a BGR image in; the test-time resize, the model's channel
    order and no_grad as it does them) around a model that is already built and loaded: the
    trainer's own after training, or the demo's, which our checkpointer loaded. It runs the model
    in eval mode and puts back the mode it found."""

    def __init__(self, cfg, model):
        # Not DefaultPredictor.__init__, which would build and load a second model; these are
        # the attributes its __call__ reads.
        self.cfg = cfg.clone()
        self.model = model
        self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else None
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT

    def __call__(self, original_image: np.ndarray):
        """original_image: (H, W, 3) uint8 in BGR order, as DefaultPredictor takes it."""
        was_training = self.model.training
        self.model.eval()
        try:
            return super().__call__(original_image)
        finally:
            self.model.train(was_training)


def draw_instances(image_rgb: np.ndarray, instances, metadata, score_thresh: float) -> np.ndarray:
    """Masks, boxes, class names and scores in each class's own colour (thing_colors, unjittered,
    so a Cityscapes car is Cityscapes car blue)."""
    instances = instances.to("cpu")
    instances = instances[instances.scores >= score_thresh]
    classes = instances.pred_classes.tolist()
    names = metadata.get("thing_classes", [str(c) for c in range(max(classes, default=0) + 1)])
    labels = [f"{names[c]} {s * 100:.0f}%" for c, s in zip(classes, instances.scores.tolist())]
    colors = [np.array(metadata.thing_colors[c]) / 255.0 for c in classes] if metadata.get("thing_colors") else None
    masks = instances.pred_masks.numpy() if instances.has("pred_masks") else None
    vis = Visualizer(image_rgb, metadata, instance_mode=ColorMode.SEGMENTATION)
    return vis.overlay_instances(
        boxes=instances.pred_boxes if instances.has("pred_boxes") else None,
        masks=masks, labels=labels, assigned_colors=colors, alpha=0.5,
    ).get_image()


def draw_ground_truth(image_rgb: np.ndarray, dataset_dict, metadata) -> np.ndarray:
    """An image with its annotations drawn in each class's Cityscapes colour."""
    vis = Visualizer(image_rgb, metadata, instance_mode=ColorMode.SEGMENTATION)
    return vis.draw_dataset_dict(dataset_dict).get_image()


def draw_dataset_predictions(cfg, model, dataset_name, out_dir, num_images, score_thresh) -> List[str]:
    """Saves `<stem>_pred_vs_gt.png` (predictions on top, ground truth below) for the first
    `num_images` images of a dataset; returns the written paths."""
    metadata = MetadataCatalog.get(dataset_name)
    predictor = InstancePredictor(cfg, model)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for d in DatasetCatalog.get(dataset_name)[:num_images]:
        bgr = utils.read_image(d["file_name"], format="BGR")
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        pred = draw_instances(rgb, predictor(bgr)["instances"], metadata, score_thresh)
        gt = draw_ground_truth(rgb, d, metadata)
        path = os.path.join(out_dir, os.path.basename(d["file_name"]).replace("_leftImg8bit.png", "_pred_vs_gt.png"))
        Image.fromarray(np.concatenate([pred, gt], axis=0)).save(path)
        written.append(path)
    return written
