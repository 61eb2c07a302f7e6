"""The training set as the training loader samples it."""
from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.build import filter_images_with_only_crowd_annotations, print_instances_class_histogram

from .cityscapes import cityscapes_root, load_cityscapes_ft_instances
from .register import EVALUATOR_TYPE


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
