"""Every model-zoo Mask R-CNN config in configs/ fine-tunes from its COCO checkpoint: built on the
fly in that model's exact model-zoo key names and shapes (80 COCO classes, BatchNorm's 0-d
counters included), transferred class by class, trained, resumed and evaluated, tiny, on CPU."""
import os
import pickle

import pytest
import torch
from conftest import CONFIGS, CS_FT_ON_CPU, load_config

ZOO_CONFIGS = {
    # config: class-specific tensors the COCO checkpoint's heads must hand over by class
    "cs_ft_R_101_FPN.yaml": ["roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.bbox_pred.weight",
                             "roi_heads.mask_head.predictor.weight"],
    "cs_ft_X_101_32x8d_FPN.yaml": ["roi_heads.box_predictor.cls_score.weight", "roi_heads.mask_head.predictor.weight"],
    "cs_ft_R_50_FPN_gn.yaml": ["roi_heads.box_predictor.cls_score.weight", "roi_heads.mask_head.predictor.weight"],
    "cs_ft_R_50_FPN_syncbn.yaml": ["roi_heads.box_predictor.cls_score.weight", "roi_heads.mask_head.predictor.weight"],
    "cs_ft_cascade_R_50_FPN.yaml": [f"roi_heads.box_predictor.{s}.cls_score.weight" for s in range(3)]
    + ["roi_heads.mask_head.predictor.weight"],
    "cs_ft_R_50_C4.yaml": ["roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.bbox_pred.weight",
                           "roi_heads.mask_head.predictor.weight"],
    "cs_ft_R_50_DC5.yaml": ["roi_heads.box_predictor.cls_score.weight", "roi_heads.mask_head.predictor.weight"],
}
ON_CPU = (*CS_FT_ON_CPU, "SOLVER.IMS_PER_BATCH", "2", "TEST.PRECISE_BN.NUM_ITER", "2")


def coco_model_zoo_stand_in(config, path):
    """The config's architecture with COCO's 80 classes, saved as the model zoo saves it: a pickle
    of {"model": {name: numpy array}, "__author__": ...}."""
    from detectron2.modeling import build_model

    cfg = load_config(config, *ON_CPU, "MODEL.ROI_HEADS.NUM_CLASSES", "80")
    state = {k: v.detach().numpy() for k, v in build_model(cfg).state_dict().items()}
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo (stand-in)"}, f)
    return state


def train_net_in_process(config, *argv):
    from cityscapes_ft.engine import argument_parser, train_or_evaluate

    return train_or_evaluate(argument_parser().parse_args(["--config-file", config, *argv]))


def test_every_zoo_config_loads_inherits_the_recipe_and_names_its_weights():
    cs_ft = load_config(os.path.join(CONFIGS, "cs_ft.yaml"))
    for name in ZOO_CONFIGS:
        cfg = load_config(os.path.join(CONFIGS, name))
        assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 8 and cfg.MODEL.MASK_ON
        assert cfg.MODEL.WEIGHTS.startswith("detectron2://") and cfg.MODEL.WEIGHTS != cs_ft.MODEL.WEIGHTS
        assert cfg.MODEL.HEAD_TRANSFER.CLASS_MAP == cs_ft.MODEL.HEAD_TRANSFER.CLASS_MAP
        assert cfg.CITYSCAPES_FT.SCHEDULE == cs_ft.CITYSCAPES_FT.SCHEDULE and cfg.DATASETS == cs_ft.DATASETS
        assert cfg.OUTPUT_DIR != cs_ft.OUTPUT_DIR


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ZOO_CONFIGS))
def test_zoo_config_fine_tunes_from_its_coco_checkpoint_resumes_and_evaluates(name, cityscapes_env, tmp_path):
    from detectron2.modeling import build_model

    from cityscapes_ft.checkpoint import build_checkpointer

    config = os.path.join(CONFIGS, name)
    stand_in = str(tmp_path / "model_final_coco.pkl")
    coco = coco_model_zoo_stand_in(config, stand_in)
    if "syncbn" in name:
        assert any(v.ndim == 0 for v in coco.values())  # BatchNorm's num_batches_tracked
    # the class-aware transfer covers every class-specific layer, and nothing is left fresh
    cfg = load_config(config, *ON_CPU)
    checkpointer = build_checkpointer(cfg, build_model(cfg))
    checkpointer.load(stand_in)
    report = checkpointer.last_load_report
    assert set(ZOO_CONFIGS[name]) <= set(report.transferred), report.format()
    assert report.fresh == [] and report.unused == [], report.format()

    out = str(tmp_path / "run")
    common = [*ON_CPU, "MODEL.WEIGHTS", stand_in, "OUTPUT_DIR", out, "SOLVER.CHECKPOINT_PERIOD", "1"]
    train_net_in_process(config, *common, "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()")
    train_net_in_process(config, "--resume", *common, "SOLVER.MAX_ITER", "3", "DATASETS.TEST", "()")
    final = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)
    assert final["iteration"] == 2  # resumed after iteration 1, ran iteration 2
    results = train_net_in_process(config, "--eval-only", *common, "MODEL.WEIGHTS",
                                   os.path.join(out, "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "eval"))
    assert set(results) == {"cityscapes", "bbox", "segm"}
    assert 0 <= results["cityscapes"]["AP"] <= 100
