"""Registers cityscapes-ft's datasets, once, on import of the package.

Detectron2 already registers `cityscapes_fine_instance_seg_*` on import; ours have their own names,
read `$DETECTRON2_DATASETS/cityscapes` when the split is first loaded (not at import), and carry the
metadata our trainer, evaluator and Visualizer need.
"""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from .cityscapes import (
    CITYSCAPES_THING_CLASSES,
    CITYSCAPES_THING_COLORS,
    CITYSCAPES_THING_LABEL_IDS,
    cityscapes_root,
    load_cityscapes_ft_instances,
    load_cityscapes_images,
)
from .foggy import FOGGY_BETAS, foggy_dataset_name, load_foggy_cityscapes_instances

EVALUATOR_TYPE = "cityscapes_ft_instance"
CITYSCAPES_FT_SPLITS = {
    "cityscapes_ft_instance_train": "train",
    "cityscapes_ft_instance_val": "val",
    "cityscapes_ft_instance_test": "test",  # images only: for tools/make_submission.py
}
SPLITS_WITHOUT_ANNOTATIONS = ("test",)


def register_cityscapes_ft_instances(name: str, split: str, root=None, load=None):
    """Register one Cityscapes-format split under `name` (the test split: its images only).

    `root` is the folder holding leftImg8bit/ and gtFine/; None means `$DETECTRON2_DATASETS/cityscapes`
    resolved when the dataset is loaded.
    """
    if load is None:
        load = load_cityscapes_images if split in SPLITS_WITHOUT_ANNOTATIONS else load_cityscapes_ft_instances
    DatasetCatalog.register(
        name, lambda split=split, root=root, load=load: load(root if root is not None else cityscapes_root(), split)
    )
    MetadataCatalog.get(name).set(
        thing_classes=list(CITYSCAPES_THING_CLASSES),
        thing_colors=[tuple(c) for c in CITYSCAPES_THING_COLORS],
        # Cityscapes label id of each contiguous class id (the official evaluation needs them).
        thing_dataset_id_to_contiguous_id={cid: i for i, cid in enumerate(CITYSCAPES_THING_LABEL_IDS)},
        evaluator_type=EVALUATOR_TYPE,
        split=split,
        **({"dataset_root": os.path.abspath(root)} if root is not None else {}),
    )


def register_all_cityscapes_ft():
    """Register cityscapes_ft_instance_{train,val,test} and the Foggy Cityscapes val densities
    (cityscapes_ft_instance_val_foggy_beta_<beta>) unless already registered."""
    for name, split in CITYSCAPES_FT_SPLITS.items():
        if name not in DatasetCatalog.list():
            register_cityscapes_ft_instances(name, split)
    for beta in FOGGY_BETAS:
        name = foggy_dataset_name("val", beta)
        if name not in DatasetCatalog.list():
            # the images from leftImg8bit_foggy/ (checked when loaded), gtFine's annotations
            register_cityscapes_ft_instances(
                name, "val", load=lambda root, split, beta=beta: load_foggy_cityscapes_instances(root, split, beta))
            MetadataCatalog.get(name).set(fog_beta=beta)
