import glob
import os

import pytest
from conftest import CONFIGS, load_config

from cityscapes_ft.errors import ConfigNotRunnable

NON_BASE = sorted(
    p for p in glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
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


def test_cs_ft_is_the_published_recipe():
    cfg = load_config(os.path.join(CONFIGS, "cs_ft.yaml"))
    assert cfg.MODEL.WEIGHTS == (
        "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"
    )
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone"
    assert cfg.MODEL.RESNETS.DEPTH == 50
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == tuple(range(800, 1025, 32))
    assert cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "choice"
    assert (cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (2048, 1024, 2048)
    assert cfg.SOLVER.IMS_PER_BATCH == 8 and cfg.SOLVER.BASE_LR == 0.01
    assert cfg.SOLVER.WARMUP_METHOD == "linear"
    assert cfg.SOLVER.WARMUP_ITERS == 500 and cfg.SOLVER.WARMUP_FACTOR == 0.001
    assert cfg.SOLVER.GAMMA == 0.1
    # MMDetection's "8 epochs" over the training set repeated 8 times, x0.1 after its epoch 7
    sched = cfg.CITYSCAPES_FT.SCHEDULE
    assert sched.UNIT == "epochs" and sched.MAX_EPOCHS == 64 and tuple(sched.STEPS_EPOCHS) == (56,)
    assert sched.REFERENCE_IMS_PER_BATCH == 8
    from cityscapes_ft.schedule import resolve_training_schedule

    resolved, schedule = resolve_training_schedule(cfg, 1, 2975)  # gtFine train size
    assert resolved.SOLVER.MAX_ITER == 23800 and tuple(resolved.SOLVER.STEPS) == (20825,)
    assert resolved.SOLVER.BASE_LR == 0.01 and resolved.SOLVER.WARMUP_ITERS == 500
    assert schedule.iters_per_epoch == 2975 / 8


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
