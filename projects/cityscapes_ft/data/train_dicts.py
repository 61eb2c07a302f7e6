"""The training set as the training loader samples it."""
import inspect
import logging

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.build import filter_images_with_only_crowd_annotations, print_instances_class_histogram
from detectron2.data.samplers import RepeatFactorTrainingSampler

from .cityscapes import cityscapes_root, load_cityscapes_ft_instances
from .register import EVALUATOR_TYPE

logger = logging.getLogger(__name__)


def _load_skipping_bad_samples(cfg):
    """DATASETS.TRAIN as detectron2's loader builds it, but with bad Cityscapes samples left out
    (and logged) instead of stopping the run."""
    dicts = []
    for name in cfg.DATASETS.TRAIN:
        meta = MetadataCatalog.get(name)
        if meta.get("evaluator_type") != EVALUATOR_TYPE:
            dicts.extend(DatasetCatalog.get(name))
            continue
        root = meta.get("dataset_root") or cityscapes_root()
        dicts.extend(load_cityscapes_ft_instances(root, meta.split, on_bad_sample="skip"))
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        dicts = filter_images_with_only_crowd_annotations(dicts)
    print_instances_class_histogram(dicts, MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).thing_classes)
    return dicts


def training_dataset_dicts(cfg):
    """DATASETS.TRAIN after FILTER_EMPTY_ANNOTATIONS, without bad samples when
    CITYSCAPES_FT.ON_BAD_SAMPLE is "skip". An epoch-based schedule counts these."""
    if cfg.CITYSCAPES_FT.ON_BAD_SAMPLE == "error":
        return get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
    return _load_skipping_bad_samples(cfg)


def training_repeat_factors(cfg, dicts):
    """With DATALOADER.SAMPLER_TRAIN RepeatFactorTrainingSampler: each image's repeat factor from
    detectron2's own category-frequency rule (DATALOADER.REPEAT_THRESHOLD, and REPEAT_SQRT where
    this detectron2 has it), with the images per class logged before and after; otherwise None."""
    if cfg.DATALOADER.SAMPLER_TRAIN != "RepeatFactorTrainingSampler":
        return None
    compute = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency
    kwargs = {}
    if "sqrt" in inspect.signature(compute).parameters and "REPEAT_SQRT" in cfg.DATALOADER:
        kwargs["sqrt"] = cfg.DATALOADER.REPEAT_SQRT
    factors = compute(dicts, cfg.DATALOADER.REPEAT_THRESHOLD, **kwargs)
    classes = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).thing_classes
    images_with = np.zeros(len(classes))
    expected = np.zeros(len(classes))
    for d, factor in zip(dicts, factors.tolist()):
        for c in {a["category_id"] for a in d.get("annotations", ()) if not a.get("iscrowd", 0)}:
            images_with[c] += 1
            expected[c] += factor
    table = ", ".join(f"{name} {int(n)} -> {e:.1f}" for name, n, e in zip(classes, images_with, expected))
    logger.info(f"Repeat-factor sampling (threshold {cfg.DATALOADER.REPEAT_THRESHOLD}): {len(dicts)} images "
                f"-> {float(factors.sum()):.1f} per pass on average; images per class, once -> per pass: {table}")
    return factors
