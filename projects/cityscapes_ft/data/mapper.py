"""The Cityscapes instance mapper: dataset dict -> model input, in detectron2's mapper idiom."""
import copy
import logging

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.utils.registry import Registry

from ..errors import CityscapesDataError

MAPPER_REGISTRY = Registry("CITYSCAPES_FT_MAPPER")
MAPPER_REGISTRY.__doc__ = "Dataset mappers, chosen by cfg.INPUT.DATASET_MAPPER_NAME."

logger = logging.getLogger(__name__)


def build_mapper(cfg, is_train: bool):
    """The mapper that INPUT.DATASET_MAPPER_NAME names in MAPPER_REGISTRY."""
    return MAPPER_REGISTRY.get(cfg.INPUT.DATASET_MAPPER_NAME)(cfg, is_train)


@MAPPER_REGISTRY.register()
class CityscapesInstanceMapper:
    """Reads the image, resizes its short side (multi-scale when training), flips horizontally,
    and turns the visible-region polygons into the target masks and boxes.

    Crowd regions (Cityscapes "*group" labels) are not targets: detectron2's RPN and ROI heads
    cannot ignore a region, so they are left out of training, and the evaluators score them as
    ignore regions. Images left without instances are dropped by the loader
    (DATALOADER.FILTER_EMPTY_ANNOTATIONS), so this mapper never returns None.
    """

    @configurable
    def __init__(self, is_train: bool, *, augmentations, image_format: str, mask_format: str):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.mask_format = mask_format
        mode = "training" if is_train else "inference"
        logger.info(f"[CityscapesInstanceMapper] augmentations used in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        if is_train:
            augs = [
                T.ResizeShortestEdge(
                    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
                )
            ]
            if cfg.INPUT.RANDOM_FLIP == "horizontal":
                augs.append(T.RandomFlip(horizontal=True, vertical=False))
            elif cfg.INPUT.RANDOM_FLIP != "none":
                raise ValueError(
                    f"INPUT.RANDOM_FLIP: Cityscapes scenes can only be flipped horizontally; got "
                    f"'{cfg.INPUT.RANDOM_FLIP}', expected 'horizontal' or 'none'"
                )
        else:
            augs = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "mask_format": cfg.INPUT.MASK_FORMAT,
        }

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        try:
            image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        except (OSError, ValueError, SyntaxError) as e:
            raise CityscapesDataError(f"Unreadable image {dataset_dict['file_name']}: {e}") from e
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))

        annotations = dataset_dict.pop("annotations", None)
        if not self.is_train or annotations is None:
            return dataset_dict
        annotations = [
            utils.transform_instance_annotations(obj, transforms, image_shape)
            for obj in annotations
            if not obj.get("iscrowd", 0)
        ]
        instances = utils.annotations_to_instances(annotations, image_shape, self.mask_format)
        if instances.has("gt_masks"):
            # The box of what is left of a mask after resizing and flipping.
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        dataset_dict["instances"] = utils.filter_empty_instances(instances)
        return dataset_dict
