"""Config keys that detectron2 lacks. Everything else reuses detectron2's own keys."""
import difflib
import os

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .errors import ConfigNotRunnable


def add_cityscapes_ft_config(cfg):
    """Add cityscapes-ft's keys to a detectron2 config (call before merge_from_file)."""
    # Name of the training/test mapper in cityscapes_ft.data.MAPPER_REGISTRY; the registry lets a
    # project swap in its own mapper without touching the trainer.
    cfg.INPUT.DATASET_MAPPER_NAME = "CityscapesInstanceMapper"

    # Class-aware initialisation of the class-specific head rows (cls_score with background,
    # bbox_pred, mask predictor) from a checkpoint with another label space: one entry per target
    # class, naming its source class (name or id in SOURCE_CLASSES); "" leaves that class freshly
    # initialised. () loads as plain detectron2 does (class-specific layers skipped on mismatch).
    cfg.MODEL.HEAD_TRANSFER = CN()
    cfg.MODEL.HEAD_TRANSFER.CLASS_MAP = ()
    # The checkpoint's classes, in its order; () takes SOURCE_DATASET's thing_classes.
    cfg.MODEL.HEAD_TRANSFER.SOURCE_CLASSES = ()
    cfg.MODEL.HEAD_TRANSFER.SOURCE_DATASET = "coco_2017_train"

    cfg.CITYSCAPES_FT = CN()
    # What CityscapesInstanceSegEvaluator reports: "cityscapes" is the official metric
    # (cityscapesscripts, mask AP/AP50), "bbox" and "segm" are COCO-style AP from pycocotools.
    cfg.CITYSCAPES_FT.EVAL_TASKS = ("cityscapes", "bbox", "segm")
    # What a bad training sample (unreadable image, missing or invalid annotation, bad polygon)
    # does: "error" stops at once naming the file; "skip" leaves it out and logs the count and
    # list. Evaluation always stops at a bad sample: skipping would change the metric.
    cfg.CITYSCAPES_FT.ON_BAD_SAMPLE = "error"
    # Keep OUTPUT_DIR/model_best.pth, the checkpoint with the best value of this evaluation metric
    # (as in metrics.json, e.g. "cityscapes/AP", "segm/AP"); "" turns it off. Needs TEST.EVAL_PERIOD.
    cfg.CITYSCAPES_FT.BEST_CHECKPOINT_METRIC = "cityscapes/AP"
    cfg.CITYSCAPES_FT.BEST_CHECKPOINT_MODE = "max"
    # After training, draw the predictions on this many images of DATASETS.TEST[0] into
    # OUTPUT_DIR/predictions/ (0 turns it off).
    cfg.CITYSCAPES_FT.VIS_NUM_IMAGES = 0
    # Score threshold for those pictures.
    cfg.CITYSCAPES_FT.VIS_SCORE_THRESH = 0.5


def load_cityscapes_ft_cfg(config_file, opts=()):
    """detectron2's defaults + our keys, then the YAML file, then KEY VALUE overrides (unfrozen)."""
    if not config_file or not os.path.isfile(config_file):
        raise FileNotFoundError(f"--config-file: no such file '{config_file}' (try configs/cs_ft.yaml)")
    cfg = get_cfg()
    add_cityscapes_ft_config(cfg)
    opts = [str(o) for o in opts]
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError) as e:
        raise ConfigNotRunnable(_unknown_key_message(cfg, config_file, opts, e)) from e
    return cfg


def _flat_keys(node, prefix=""):
    for k, v in node.items():
        if isinstance(v, CN):
            yield from _flat_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def _unknown_key_message(cfg, config_file, opts, error) -> str:
    """detectron2's message plus where our keys live and the closest existing keys."""
    message = str(error).strip("'\"")
    key = message.split(":")[-1].strip() if "Non-existent" in message else ""
    hint = ("cityscapes-ft adds only MODEL.HEAD_TRANSFER.*, INPUT.DATASET_MAPPER_NAME and "
            "CITYSCAPES_FT.* (README: 'Our config keys'); every other key is detectron2 v0.6's")
    close = difflib.get_close_matches(key, list(_flat_keys(cfg)), n=3, cutoff=0.6) if key else []
    where = f"{config_file} or the command-line overrides {opts}" if opts else config_file
    if not key:
        return f"{message} (in {where})"
    return f"{message} (in {where}). " + (f"Did you mean {', '.join(close)}? " if close else "") + hint
