"""The training set as the training loader samples it."""
import logging
import os

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.build import filter_images_with_only_crowd_annotations, print_instances_class_histogram

from ..compat import repeat_factors_from_category_frequency
from .cityscapes import cityscapes_root, load_cityscapes_ft_instances
from ..utils import atomic_write_json
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
    this detectron2 has it); otherwise None."""
    if cfg.DATALOADER.SAMPLER_TRAIN != "RepeatFactorTrainingSampler":
        return None
    return repeat_factors_from_category_frequency(
        dicts, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=cfg.DATALOADER.get("REPEAT_SQRT", True)
    )


def training_class_counts(dicts, class_names, repeat_factors=None):
    """Per class: instances and images (crowd regions left out) of the training set, and the
    images the sampler draws per pass on average (the same without repeat factors)."""
    instances = np.zeros(len(class_names), dtype=int)
    images = np.zeros(len(class_names), dtype=int)
    per_pass = np.zeros(len(class_names))
    factors = np.ones(len(dicts)) if repeat_factors is None else np.asarray(repeat_factors, dtype=float)
    for d, factor in zip(dicts, factors):
        present = [a["category_id"] for a in d.get("annotations", ()) if not a.get("iscrowd", 0)]
        np.add.at(instances, present, 1)
        for c in set(present):
            images[c] += 1
            per_pass[c] += factor
    return [{"class": name, "instances": int(i), "images": int(n), "images_per_pass": round(float(p), 2)}
            for name, i, n, p in zip(class_names, instances, images, per_pass)]


def log_training_set(cfg, dicts, repeat_factors, output_dir=None):
    """Logs the training set per class (with what repeat-factor sampling makes of it) and, given
    an output folder, writes it to <output_dir>/training_set.json for the run report."""
    counts = training_class_counts(dicts, MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).thing_classes, repeat_factors)
    sampling = (f"repeat-factor sampling (threshold {cfg.DATALOADER.REPEAT_THRESHOLD}): "
                f"{float(np.asarray(repeat_factors, dtype=float).sum()):.1f} images per pass on average"
                if repeat_factors is not None else "each image once per pass")
    rows = "\n".join(f"  {r['class']:<12}{r['instances']:>10}{r['images']:>8}{r['images_per_pass']:>16.1f}" for r in counts)
    logger.info(f"Training set: {len(dicts)} images, {sampling}\n  {'class':<12}{'instances':>10}{'images':>8}"
                f"{'images per pass':>16}\n{rows}")
    if output_dir:
        atomic_write_json(os.path.join(output_dir, "training_set.json"),
                          {"images": len(dicts), "sampling": sampling, "classes": counts})
    return counts
