"""Drawing predictions and ground truth with detectron2's Visualizer in the Cityscapes colours."""
import os
from typing import List

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image


class InstancePredictor:
    """Runs a built model on one BGR/RGB image (as cfg.INPUT.FORMAT says) at the test size."""

    def __init__(self, cfg, model):
        self.model = model
        self.input_format = cfg.INPUT.FORMAT
        self.resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)

    @torch.no_grad()
    def __call__(self, image: np.ndarray):
        was_training = self.model.training
        self.model.eval()
        try:
            height, width = image.shape[:2]
            resized = self.resize.get_transform(image).apply_image(image)
            tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
            return self.model([{"image": tensor, "height": height, "width": width}])[0]
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
        image = utils.read_image(d["file_name"], format=cfg.INPUT.FORMAT)
        rgb = utils.convert_image_to_rgb(image, cfg.INPUT.FORMAT)
        pred = draw_instances(rgb, predictor(image)["instances"], metadata, score_thresh)
        gt = draw_ground_truth(rgb, d, metadata)
        path = os.path.join(out_dir, os.path.basename(d["file_name"]).replace("_leftImg8bit.png", "_pred_vs_gt.png"))
        Image.fromarray(np.concatenate([pred, gt], axis=0)).save(path)
        written.append(path)
    return written
