import glob
import os

import pytest
from conftest import CONFIGS, load_config

from cityscapes_ft.errors import ConfigNotRunnable

NON_BASE = sorted(
    p for p in glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
    and os.path.dirname(p) != os.path.join(CONFIGS, "sweeps")  # search spaces (tools/sweep.py), not configs
)


def test_there_are_configs_to_check():
    names = {os.path.relpath(p, CONFIGS) for p in NON_BASE}
    assert {"cs_ft.yaml", "quick_schedules/cs_ft_cpu_demo.yaml"} <= names


@pytest.mark.parametrize("path", NON_BASE, ids=lambda p: os.path.relpath(p, CONFIGS))
def test_every_config_loads_with_8_classes_on_our_datasets(path):
    cfg = load_config(path)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 8
    assert cfg.MODEL.MASK_ON
    assert cfg.DATASETS.TRAIN == ("cityscapes_ft_instance_train",)
    assert cfg.DATASETS.TEST == ("cityscapes_ft_instance_val",)
    assert cfg.INPUT.DATASET_MAPPER_NAME == "CityscapesInstanceMapper"


@pytest.mark.parametrize("path", NON_BASE, ids=lambda p: os.path.relpath(p, CONFIGS))
def test_iteration_configs_run_as_written_at_their_own_batch(path):
    """Rescaling applies only to another batch: a config run as written keeps its numbers."""
    from cityscapes_ft.schedule import resolve_training_schedule

    cfg = load_config(path)
    resolved, schedule = resolve_training_schedule(cfg, max(cfg.SOLVER.REFERENCE_WORLD_SIZE, 1), 2975)
    assert schedule.lr_scale == 1.0 and resolved.SOLVER.BASE_LR == cfg.SOLVER.BASE_LR
    assert resolved.SOLVER.WARMUP_ITERS == cfg.SOLVER.WARMUP_ITERS
    if cfg.CITYSCAPES_FT.SCHEDULE.UNIT == "iterations":
        assert resolved.SOLVER.MAX_ITER == cfg.SOLVER.MAX_ITER
        assert tuple(resolved.SOLVER.STEPS) == tuple(cfg.SOLVER.STEPS)


def test_cs_ft_is_detectron2s_cityscapes_recipe_from_its_coco_model():
    """Against detectron2's own files: the input sizes of its Cityscapes config, the model of its
    COCO R50-FPN 3x config (8 classes instead of 80) and that config's checkpoint as initialisation."""
    from detectron2 import model_zoo

    from cityscapes_ft.config import load_cityscapes_ft_cfg

    cfg = load_config(os.path.join(CONFIGS, "cs_ft.yaml"))
    d2_cityscapes = load_cityscapes_ft_cfg(model_zoo.get_config_file("Cityscapes/mask_rcnn_R_50_FPN.yaml"), [])
    for key in ("MIN_SIZE_TRAIN", "MIN_SIZE_TRAIN_SAMPLING", "MAX_SIZE_TRAIN", "MIN_SIZE_TEST", "MAX_SIZE_TEST"):
        assert cfg.INPUT[key] == d2_cityscapes.INPUT[key], key
    coco = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
    d2_coco = load_cityscapes_ft_cfg(model_zoo.get_config_file(coco), [])
    from detectron2.utils.file_io import Detectron2Handler as handler

    assert cfg.MODEL.WEIGHTS.replace(handler.PREFIX, handler.S3_DETECTRON2_PREFIX) == model_zoo.get_checkpoint_url(coco)
    for key in ("META_ARCHITECTURE", "BACKBONE", "RESNETS", "FPN", "ANCHOR_GENERATOR", "RPN", "ROI_BOX_HEAD",
                "ROI_MASK_HEAD", "PIXEL_MEAN", "PIXEL_STD"):
        assert cfg.MODEL[key] == d2_coco.MODEL[key], key
    assert (cfg.MODEL.ROI_HEADS.NUM_CLASSES, d2_coco.MODEL.ROI_HEADS.NUM_CLASSES) == (8, 80)


def test_cs_ft_schedule_is_mmdetections_8_epochs_over_the_8_times_repeated_training_set():
    """MMDetection's cityscapes Mask R-CNN: RepeatDataset(times=8), 8 epochs, LR x0.1 after epoch
    7, batch 8 (8 GPUs x 1), LR 0.01, linear warmup of 500 iterations; on gtFine's 2975 images."""
    from cityscapes_ft.schedule import resolve_training_schedule

    images, repeat, epochs, step_epoch, batch = 2975, 8, 8, 7, 8
    resolved, _ = resolve_training_schedule(load_config(os.path.join(CONFIGS, "cs_ft.yaml")), 1, images)
    assert resolved.SOLVER.IMS_PER_BATCH == batch and resolved.SOLVER.BASE_LR == 0.01
    assert resolved.SOLVER.MAX_ITER == round(epochs * repeat * images / batch)
    assert tuple(resolved.SOLVER.STEPS) == (round(step_epoch * repeat * images / batch),)
    assert resolved.SOLVER.WARMUP_ITERS == 500 and resolved.SOLVER.WARMUP_METHOD == "linear"


def test_paper_config_is_the_mask_rcnn_papers_4k_fine_tune():
    from cityscapes_ft.schedule import resolve_training_schedule

    cfg = load_config(os.path.join(CONFIGS, "cs_ft_paper_4k.yaml"))
    resolved, _ = resolve_training_schedule(cfg, 1, 2975)
    assert resolved.SOLVER.MAX_ITER == 4000 and tuple(resolved.SOLVER.STEPS) == (3000,)
    assert resolved.SOLVER.IMS_PER_BATCH == 8 and resolved.SOLVER.BASE_LR == 0.01
    assert resolved.MODEL.WEIGHTS == cfg.MODEL.WEIGHTS and resolved.MODEL.WEIGHTS.endswith(".pkl")


def test_our_base_means_what_detectron2s_base_means():
    """configs/Base-RCNN-FPN.yaml is ours, but must give the same config as detectron2's."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    ours = get_cfg()
    ours.merge_from_file(os.path.join(CONFIGS, "Base-RCNN-FPN.yaml"))
    theirs = get_cfg()
    theirs.merge_from_file(model_zoo.get_config_file("Base-RCNN-FPN.yaml"))
    theirs.DATASETS = ours.DATASETS  # theirs names COCO; ours leaves datasets to the Cityscapes base
    assert ours == theirs


def test_trailing_overrides_and_unknown_keys():
    cfg = load_config(os.path.join(CONFIGS, "cs_ft.yaml"), "SOLVER.BASE_LR", "0.02",
                      "CITYSCAPES_FT.VIS_NUM_IMAGES", "3")
    assert cfg.SOLVER.BASE_LR == 0.02 and cfg.CITYSCAPES_FT.VIS_NUM_IMAGES == 3
    with pytest.raises(ConfigNotRunnable, match="Non-existent key: SOLVER.NOT_A_KEY") as e:
        load_config(os.path.join(CONFIGS, "cs_ft.yaml"), "SOLVER.NOT_A_KEY", "1")
    assert "CITYSCAPES_FT.*" in str(e.value)
    with pytest.raises(ConfigNotRunnable, match="Did you mean SOLVER.BASE_LR"):
        load_config(os.path.join(CONFIGS, "cs_ft.yaml"), "SOLVER.BASE_RL", "0.1")


def test_unknown_key_in_a_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{os.path.join(CONFIGS, "cs_ft.yaml")}"\nCITYSCAPES_FT:\n  EVAL_TASK: ("segm",)\n')
    with pytest.raises(ConfigNotRunnable) as e:
        load_config(str(bad))
    assert "CITYSCAPES_FT.EVAL_TASK" in str(e.value) and str(bad) in str(e.value)
    assert "CITYSCAPES_FT.EVAL_TASKS" in str(e.value)


def test_a_lazyconfig_file_given_to_train_net_is_one_clear_message(tmp_path):
    from cityscapes_ft.config import load_cityscapes_ft_cfg
    from cityscapes_ft.errors import ConfigNotRunnable
    from detectron2 import model_zoo

    lazy = model_zoo.get_config_file("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")
    with pytest.raises(ConfigNotRunnable, match="LazyConfig") as e:
        load_cityscapes_ft_cfg(lazy, ())
    assert lazy in str(e.value) and "tools/lazyconfig_train_net.py" in str(e.value)
