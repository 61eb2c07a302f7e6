"""Config keys that detectron2 lacks. Everything else reuses detectron2's own keys."""
from detectron2.config import CfgNode as CN


def add_cityscapes_ft_config(cfg):
    """Add cityscapes-ft's keys to a detectron2 config (call before merge_from_file)."""
    # Name of the training/test mapper in cityscapes_ft.data.MAPPER_REGISTRY; the registry lets a
    # project swap in its own mapper without touching the trainer.
    cfg.INPUT.DATASET_MAPPER_NAME = "CityscapesInstanceMapper"

    cfg.CITYSCAPES_FT = CN()
    # What CityscapesInstanceSegEvaluator reports: "cityscapes" is the official metric
    # (cityscapesscripts, mask AP/AP50), "bbox" and "segm" are COCO-style AP from pycocotools.
    cfg.CITYSCAPES_FT.EVAL_TASKS = ("cityscapes", "bbox", "segm")
    # After training, draw the predictions on this many images of DATASETS.TEST[0] into
    # OUTPUT_DIR/predictions/ (0 turns it off).
    cfg.CITYSCAPES_FT.VIS_NUM_IMAGES = 0
    # Score threshold for those pictures.
    cfg.CITYSCAPES_FT.VIS_SCORE_THRESH = 0.5
