"""Checks that turn configurations this install cannot run into one clear message up front."""
import os
import tempfile

import torch
from detectron2.data import MetadataCatalog

from .errors import ConfigNotRunnable


def detectron2_has_compiled_ops() -> bool:
    """False when detectron2 was built without its C++ extension (install/detectron2_C_stub.py)."""
    from detectron2 import _C

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


def check_config_runnable(cfg):
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
    if cfg.CITYSCAPES_FT.ON_BAD_SAMPLE not in ("error", "skip"):
        raise ConfigNotRunnable(
            f"CITYSCAPES_FT.ON_BAD_SAMPLE is '{cfg.CITYSCAPES_FT.ON_BAD_SAMPLE}'; expected 'error' "
            "(stop at the first bad training sample) or 'skip' (leave bad samples out, logged)"
        )
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and len(classes) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            raise ConfigNotRunnable(
                f"MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES}, but dataset "
                f"'{name}' has {len(classes)} classes ({', '.join(classes)})"
            )
