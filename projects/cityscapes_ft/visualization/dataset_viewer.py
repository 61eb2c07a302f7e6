"""Ground truth of a registered split, as loaded or as the training mapper augments it."""
import os
from typing import Iterator, List, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from ..data import build_mapper
from .drawing import draw_ground_truth


def dataset_pictures(cfg, dataset_name: str, source: str, num_images: int = 8) -> Iterator[Tuple[str, np.ndarray]]:
    """(file name, RGB picture) of the first images of a split. source "annotation": the dataset
    dicts as loaded; "dataloader": after the training mapper (resize, flip, crop, polygons to
    masks, crowd removed), so the augmentations can be seen."""
    if source not in ("annotation", "dataloader"):
        raise ValueError(f"--source must be 'annotation' or 'dataloader', got '{source}'")
    metadata = MetadataCatalog.get(dataset_name)
    dicts = DatasetCatalog.get(dataset_name)[:num_images]
    mapper = build_mapper(cfg, is_train=True) if source == "dataloader" else None
    for d in dicts:
        if mapper is None:
            picture = draw_ground_truth(utils.read_image(d["file_name"], format="RGB"), d, metadata)
        else:
            out = mapper(d)
            rgb = utils.convert_image_to_rgb(out["image"].permute(1, 2, 0).numpy(), cfg.INPUT.FORMAT)
            inst = out["instances"]
            vis = Visualizer(rgb, metadata)
            names = [metadata.thing_classes[c] for c in inst.gt_classes.tolist()]
            colors = [np.array(metadata.thing_colors[c]) / 255.0 for c in inst.gt_classes.tolist()]
            masks = inst.gt_masks.tensor.numpy() if hasattr(inst.gt_masks, "tensor") else inst.gt_masks
            picture = vis.overlay_instances(
                labels=names, boxes=inst.gt_boxes, masks=masks, assigned_colors=colors
            ).get_image()
        yield d["file_name"], picture


def draw_dataset(cfg, dataset_name: str, source: str, output_dir: str, num_images: int = 8) -> List[str]:
    """Saves dataset_pictures as `<output_dir>/<source>_<image name>`; returns the paths."""
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for file_name, picture in dataset_pictures(cfg, dataset_name, source, num_images):
        path = os.path.join(output_dir, f"{source}_" + os.path.basename(file_name))
        Image.fromarray(picture).save(path)
        written.append(path)
    return written
