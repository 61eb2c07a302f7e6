"""Config keys that detectron2 lacks. Everything else reuses detectron2's own keys."""
import difflib
import math
import os
from typing import Dict

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .errors import ConfigNotRunnable

# The one rule for rescaling a schedule (README, "Schedules, scaling"): it does not depend on which
# file of a _BASE_ chain set a value.
SCHEDULE_SCALING_RULE = (
    "Values in config files are stated for CITYSCAPES_FT.SCHEDULE.REFERENCE_IMS_PER_BATCH images per "
    "step (0: the config's SOLVER.IMS_PER_BATCH) and are rescaled to the run's global batch (LR by "
    "LR_SCALING, iteration counts inversely); values typed on the command line are used as typed."
)

# CITYSCAPES_FT.SCHEDULE.LR_SCALING: the LR factor for a global batch `ratio` times the reference.
LR_SCALING_RULES = {
    "linear": lambda ratio: ratio,
    "sqrt": math.sqrt,
    "none": lambda ratio: 1.0,
}


def add_cityscapes_ft_config(cfg):
    """Add cityscapes-ft's keys to a detectron2 config (call before merge_from_file)."""
    # Name of the training/test mapper in cityscapes_ft.data.MAPPER_REGISTRY; the registry lets a
    # project swap in its own mapper without touching the trainer.
    cfg.INPUT.DATASET_MAPPER_NAME = "CityscapesInstanceMapper"

    # Class-aware initialisation of the class-specific head rows (cls_score with background,
    # bbox_pred, mask predictor) from a checkpoint with another label space: one entry per target
    # class, naming its source class (name or id in SOURCE_CLASSES); "" leaves that class freshly
    # initialised. () loads as plain detectron2 does (class-specific layers skipped on mismatch).
    # SHA-256 of the MODEL.WEIGHTS file (its hex digest, or a prefix of at least 8 characters, as
    # torch.hub pins files): a file with another digest (a corrupted or substituted download) is
    # refused before it is unpickled. "" checks nothing; every load logs the digest either way.
    cfg.MODEL.WEIGHTS_SHA256 = ""

    cfg.MODEL.HEAD_TRANSFER = CN()
    cfg.MODEL.HEAD_TRANSFER.CLASS_MAP = ()
    # The checkpoint's classes, in its order; () takes SOURCE_DATASET's thing_classes.
    cfg.MODEL.HEAD_TRANSFER.SOURCE_CLASSES = ()
    cfg.MODEL.HEAD_TRANSFER.SOURCE_DATASET = "coco_2017_train"

    cfg.CITYSCAPES_FT = CN()
    # A run from a detectron2 LazyConfig file (tools/lazyconfig_train_net.py, cityscapes_ft.lazy):
    # the file and its lower-case `key=value` overrides, from which every process builds the
    # model, the mappers and the optimizer's parameter rules; the rest of the file is translated
    # into this config's keys. "" for YAML runs.
    cfg.CITYSCAPES_FT.LAZY_CONFIG = CN()
    cfg.CITYSCAPES_FT.LAZY_CONFIG.FILE = ""
    cfg.CITYSCAPES_FT.LAZY_CONFIG.OVERRIDES = ()
    # What CityscapesInstanceSegEvaluator reports: "cityscapes" is the official metric
    # (cityscapesscripts, mask AP/AP50), "bbox" and "segm" are COCO-style AP from pycocotools.
    cfg.CITYSCAPES_FT.EVAL_TASKS = ("cityscapes", "bbox", "segm")
    # Also break the box and mask AP down into TIDE's error causes (evaluation/errors.py: Cls, Loc,
    # Both, Dupe, Bkg, Miss, in AP points at IoU 0.5), draw the confusion matrix and PR curves into
    # <evaluation folder>/error_analysis/; the results gain "errors". Costs seconds per 100 images.
    cfg.CITYSCAPES_FT.ERROR_ANALYSIS = False
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

    # Print losses, LRs, timings and ETA to the console every LOG_PERIOD iterations; write them to
    # metrics.json and TensorBoard every METRICS_PERIOD iterations (1: the full LR trace).
    # detectron2 does both every 20.
    cfg.CITYSCAPES_FT.LOG_PERIOD = 20
    cfg.CITYSCAPES_FT.METRICS_PERIOD = 1

    # Training schedule. UNIT "iterations" reads SOLVER.MAX_ITER/STEPS as detectron2 does; "epochs"
    # computes them from the lengths below (in passes over the training set after filtering) with
    # the dataset's size and the global batch SOLVER.IMS_PER_BATCH; the conversion is logged.
    cfg.CITYSCAPES_FT.SCHEDULE = CN()
    cfg.CITYSCAPES_FT.SCHEDULE.UNIT = "iterations"
    cfg.CITYSCAPES_FT.SCHEDULE.MAX_EPOCHS = 0.0
    cfg.CITYSCAPES_FT.SCHEDULE.STEPS_EPOCHS = ()
    # Checkpoint and evaluation periods in epochs (0 keeps SOLVER.CHECKPOINT_PERIOD and
    # TEST.EVAL_PERIOD in iterations). Only used with UNIT "epochs".
    cfg.CITYSCAPES_FT.SCHEDULE.CHECKPOINT_PERIOD_EPOCHS = 0.0
    cfg.CITYSCAPES_FT.SCHEDULE.EVAL_PERIOD_EPOCHS = 0.0
    # The global batch that the config files' BASE_LR, WARMUP_ITERS and (in iteration mode)
    # iteration counts are stated for (SCHEDULE_SCALING_RULE below). 0: for the config's own
    # SOLVER.IMS_PER_BATCH, so only detectron2's REFERENCE_WORLD_SIZE with --num-gpus rescales.
    cfg.CITYSCAPES_FT.SCHEDULE.REFERENCE_IMS_PER_BATCH = 0
    cfg.CITYSCAPES_FT.SCHEDULE.LR_SCALING = "linear"

    # Split each optimizer step's SOLVER.IMS_PER_BATCH images into this many forward/backward
    # passes whose gradients are summed: same effective batch and LR schedule (counted in
    # optimizer steps), less memory. IMS_PER_BATCH must divide by (processes x this).
    cfg.CITYSCAPES_FT.GRADIENT_ACCUMULATION_STEPS = 1

    # Staged freezing: the backbone (ResNet; with INCLUDE_FPN also the FPN) gets no gradient for
    # the first ITERS iterations (or EPOCHS epochs, if > 0), then trains with its own LR. Layers
    # that MODEL.BACKBONE.FREEZE_AT freezes stay frozen throughout.
    cfg.CITYSCAPES_FT.BACKBONE_FREEZE = CN()
    cfg.CITYSCAPES_FT.BACKBONE_FREEZE.ITERS = 0
    cfg.CITYSCAPES_FT.BACKBONE_FREEZE.EPOCHS = 0.0
    cfg.CITYSCAPES_FT.BACKBONE_FREEZE.INCLUDE_FPN = False

    # Layer-wise LR: each part's LR is BASE_LR (as scheduled) times its multiplier. Weight decay on
    # norms and biases follows detectron2's SOLVER.WEIGHT_DECAY_NORM / SOLVER.WEIGHT_DECAY_BIAS
    # (set both to 0.0 for none).
    cfg.CITYSCAPES_FT.LR_MULTIPLIER = CN()
    cfg.CITYSCAPES_FT.LR_MULTIPLIER.BACKBONE = 1.0
    cfg.CITYSCAPES_FT.LR_MULTIPLIER.FPN = 1.0
    cfg.CITYSCAPES_FT.LR_MULTIPLIER.HEADS = 1.0

    # Where metrics go besides metrics.json and the console: any of "tensorboard", "mlflow"
    # (MLFLOW_TRACKING_URI, else MLflow's own default) and "wandb" (offline unless WANDB_MODE says
    # otherwise; `wandb sync` uploads). Only the main process logs; a tracking server that cannot
    # be reached never stops training (engine/tracking.py).
    cfg.CITYSCAPES_FT.WRITERS = ("tensorboard",)
    # The MLflow experiment / W&B project of the run; "" takes MLFLOW_EXPERIMENT_NAME or
    # WANDB_PROJECT, else "cityscapes-ft".
    cfg.CITYSCAPES_FT.TRACKING_EXPERIMENT = ""

    # Early stopping on BEST_CHECKPOINT_METRIC (in BEST_CHECKPOINT_MODE's direction): stop when it
    # has not improved by more than MIN_DELTA (in the metric's units) for PATIENCE evaluations in
    # a row. PATIENCE 0 turns it off. model_best.pth keeps the best model.
    cfg.CITYSCAPES_FT.EARLY_STOP = CN()
    cfg.CITYSCAPES_FT.EARLY_STOP.PATIENCE = 0
    cfg.CITYSCAPES_FT.EARLY_STOP.MIN_DELTA = 0.0

    # Set by tools/sweep.py in each trial's command line, not by hand: the Optuna storage URL, study
    # name and trial number this run reports its periodic evaluations (BEST_CHECKPOINT_METRIC) to;
    # it stops when the study's pruner prunes the trial (engine/stopping.py). "": not a sweep trial.
    cfg.CITYSCAPES_FT.SWEEP = CN()
    cfg.CITYSCAPES_FT.SWEEP.STORAGE = ""
    cfg.CITYSCAPES_FT.SWEEP.STUDY = ""
    cfg.CITYSCAPES_FT.SWEEP.TRIAL = -1


def load_cityscapes_ft_cfg(config_file, opts=()):
    """detectron2's defaults + our keys, then the YAML file, then KEY VALUE overrides (unfrozen)."""
    if not config_file or not os.path.isfile(config_file):
        raise FileNotFoundError(f"--config-file: no such file '{config_file}' (try configs/cs_ft.yaml)")
    if config_file.endswith(".py"):
        raise ConfigNotRunnable(
            f"--config-file {config_file} is a LazyConfig (.py) file: run it with "
            f"tools/lazyconfig_train_net.py --config-file {config_file} (overrides as key=value); "
            "tools/train_net.py reads YAML configs"
        )
    cfg = get_cfg()
    add_cityscapes_ft_config(cfg)
    opts = [str(o) for o in opts]
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(_ints_for_float_keys(cfg, opts))
    except (KeyError, AssertionError) as e:
        raise ConfigNotRunnable(_unknown_key_message(cfg, config_file, opts, e)) from e
    except ValueError as e:  # yacs: "Type mismatch (<class 'float'> vs. <class 'str'>) ..."
        where = f"{config_file} or the command-line overrides {opts}" if opts else config_file
        raise ConfigNotRunnable(f"{e} (in {where})") from e
    return cfg


def command_line_keys(opts=()) -> Dict[str, str]:
    """The keys of the command line's KEY VALUE pairs, each with where it was set: the schedule
    uses these values as typed and rescales only what config files state (SCHEDULE_SCALING_RULE)."""
    return {str(key): "set on the command line" for key in list(opts)[0::2]}


def _ints_for_float_keys(cfg, opts):
    """`MAX_EPOCHS 8` for a float key: yacs would refuse the int, so pass it as 8.0."""
    out = list(opts)
    for i in range(0, len(out) - 1, 2):
        node, *path = out[i].split(".")
        value = cfg.get(node)
        for part in path:
            value = value.get(part) if isinstance(value, CN) else None
        if isinstance(value, float) and out[i + 1].lstrip("+-").isdigit():
            out[i + 1] = str(float(out[i + 1]))
    return out


def _flat_items(node, prefix=""):
    for k, v in node.items():
        if isinstance(v, CN):
            yield from _flat_items(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def flat_config_items(cfg):
    """(KEY.PATH, value) for every key of a config, in order: what trackers log as parameters."""
    return list(_flat_items(cfg))


def _flat_keys(node):
    return [key for key, _ in _flat_items(node)]


def _unknown_key_message(cfg, config_file, opts, error) -> str:
    """detectron2's message plus where our keys live and the closest existing keys."""
    message = str(error).strip("'\"")
    key = message.split(":")[-1].strip() if "Non-existent" in message else ""
    hint = ("cityscapes-ft adds only MODEL.HEAD_TRANSFER.*, MODEL.WEIGHTS_SHA256, INPUT.DATASET_MAPPER_NAME and "
            "CITYSCAPES_FT.* (README: 'Our config keys'); every other key is detectron2 v0.6's")
    close = difflib.get_close_matches(key, list(_flat_keys(cfg)), n=3, cutoff=0.6) if key else []
    where = f"{config_file} or the command-line overrides {opts}" if opts else config_file
    if not key:
        return f"{message} (in {where})"
    return f"{message} (in {where}). " + (f"Did you mean {', '.join(close)}? " if close else "") + hint
