"""Checks that turn configurations this install cannot run into one clear message up front."""
import os
import tempfile

import torch
from detectron2.data import MetadataCatalog

from .config import LR_SCALING_RULES
from .data import MAPPER_REGISTRY
from .errors import ConfigNotRunnable


def detectron2_has_compiled_ops() -> bool:
    """False when detectron2 was built without its C++ extension: our stand-in
    (install/detectron2_C_stub.py) answers the import, or (upstream detectron2) nothing does."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return not getattr(_C, "BUILT_WITHOUT_EXTENSION", False)


def ops_needing_extension(cfg):
    """The config keys that ask for an op only detectron2's compiled extension provides."""
    needs = []
    if any(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE):
        needs.append("MODEL.RESNETS.DEFORM_ON_PER_STAGE (deformable convolution)")
    if cfg.MODEL.PROPOSAL_GENERATOR.NAME == "RRPN":
        needs.append("MODEL.PROPOSAL_GENERATOR.NAME RRPN (rotated boxes)")
    if cfg.MODEL.ROI_HEADS.NAME == "RROIHeads":
        needs.append("MODEL.ROI_HEADS.NAME RROIHeads (rotated boxes)")
    if cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE == "ROIAlignRotated":
        needs.append("MODEL.ROI_BOX_HEAD.POOLER_TYPE ROIAlignRotated (rotated boxes)")
    return needs


def check_output_dir_writable(output_dir: str):
    """Fail before any work when OUTPUT_DIR cannot hold checkpoints and results."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ConfigNotRunnable(
            f"OUTPUT_DIR '{output_dir}' cannot be written ({e.strerror or e}); pass a writable "
            "folder, e.g. `OUTPUT_DIR ./output/run1`"
        ) from e


def _check_choice(key, value, choices, meaning=""):
    if value not in choices:
        raise ConfigNotRunnable(
            f"{key} is {value!r}; expected one of {', '.join(repr(c) for c in choices)}{meaning}"
        )


def check_config_runnable(cfg):
    """Every check of a loaded config, before any work: one ConfigNotRunnable naming the key."""
    ft = cfg.CITYSCAPES_FT
    _check_choice("CITYSCAPES_FT.SCHEDULE.UNIT", ft.SCHEDULE.UNIT, ("iterations", "epochs"))
    _check_choice("CITYSCAPES_FT.SCHEDULE.LR_SCALING", ft.SCHEDULE.LR_SCALING, tuple(LR_SCALING_RULES))
    _check_choice("CITYSCAPES_FT.ON_BAD_SAMPLE", ft.ON_BAD_SAMPLE, ("error", "skip"),
                  " (stop at the first bad training sample, or leave bad samples out, logged)")
    _check_choice("CITYSCAPES_FT.BEST_CHECKPOINT_MODE", ft.BEST_CHECKPOINT_MODE, ("max", "min"))
    _check_choice("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE, ("value", "norm"),
                  " (each parameter's gradient clipped by value or by its norm)")
    digest = cfg.MODEL.WEIGHTS_SHA256
    if digest and not (8 <= len(digest) <= 64 and all(c in "0123456789abcdefABCDEF" for c in digest)):
        raise ConfigNotRunnable(
            f"MODEL.WEIGHTS_SHA256 is {digest!r}; expected the hex SHA-256 of MODEL.WEIGHTS, or a prefix "
            "of at least 8 hex characters (e.g. from `sha256sum model_final.pkl`)"
        )
    for task in ft.EVAL_TASKS:
        _check_choice("An entry of CITYSCAPES_FT.EVAL_TASKS", task, ("cityscapes", "bbox", "segm"),
                      " (official Cityscapes mask AP, COCO box AP, COCO mask AP)")
    _check_choice("INPUT.DATASET_MAPPER_NAME", cfg.INPUT.DATASET_MAPPER_NAME,
                  tuple(name for name, _ in MAPPER_REGISTRY), " (cityscapes_ft.data.MAPPER_REGISTRY)")
    _check_choice("DATALOADER.SAMPLER_TRAIN", cfg.DATALOADER.SAMPLER_TRAIN,
                  ("TrainingSampler", "RepeatFactorTrainingSampler"),
                  " (the samplers cityscapes-ft's resumable training stream reproduces exactly)")
    for key, value in (("CITYSCAPES_FT.GRADIENT_ACCUMULATION_STEPS", ft.GRADIENT_ACCUMULATION_STEPS),
                       ("CITYSCAPES_FT.LOG_PERIOD", ft.LOG_PERIOD),
                       ("CITYSCAPES_FT.METRICS_PERIOD", ft.METRICS_PERIOD),
                       ("SOLVER.IMS_PER_BATCH", cfg.SOLVER.IMS_PER_BATCH)):
        if value < 1:
            raise ConfigNotRunnable(f"{key} is {value}; it must be at least 1")
    needs = ops_needing_extension(cfg)
    if needs and not detectron2_has_compiled_ops():
        raise ConfigNotRunnable(
            "This config needs detectron2's compiled C++ extension (detectron2._C), which this "
            "detectron2 was built without (pb1-detectron2==0.6 ships no C++ sources): "
            + "; ".join(needs)
            + ". Turn these off, or install a detectron2 built from source and then "
            "`pip install -e .` here (README: 'Using your own detectron2')."
        )
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigNotRunnable(
            f"MODEL.DEVICE is '{cfg.MODEL.DEVICE}' but torch finds no CUDA device here; "
            "add `MODEL.DEVICE cpu` to the command line (or use a CPU config such as "
            "configs/quick_schedules/cs_ft_cpu_demo.yaml)"
        )
    if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
        raise ConfigNotRunnable(
            f"SOLVER.AMP.ENABLED is True but MODEL.DEVICE is '{cfg.MODEL.DEVICE}': mixed precision "
            "training needs CUDA. Use `SOLVER.AMP.ENABLED False` on CPU (or "
            "CITYSCAPES_FT.GRADIENT_ACCUMULATION_STEPS to save memory)"
        )
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and len(classes) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            raise ConfigNotRunnable(
                f"MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES}, but dataset "
                f"'{name}' has {len(classes)} classes ({', '.join(classes)})"
            )


FROM_SCRATCH_FROZEN_BN = (
    "MODEL.WEIGHTS is empty and MODEL.RESNETS.NORM is FrozenBN: a randomly initialised backbone "
    "with frozen batch norm has no normalisation at all and diverges within a few iterations. "
    "Start from weights (MODEL.WEIGHTS), or train from scratch with MODEL.RESNETS.NORM GN (as "
    "configs/quick_schedules/ do) or BN"
)


def config_warnings(cfg, training: bool):
    """Settings that run but rarely do what the user wants: one line each, logged at start."""
    warnings = []
    if training and not cfg.MODEL.WEIGHTS and cfg.MODEL.RESNETS.NORM == "FrozenBN":
        warnings.append(FROM_SCRATCH_FROZEN_BN)
    return warnings
