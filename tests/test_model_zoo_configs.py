"""Every model-zoo Mask R-CNN config in configs/ is detectron2's own model-zoo config with 8
classes: the same MODEL section as detectron2's COCO config (get_config_file) and that config's
checkpoint (get_checkpoint_url) as MODEL.WEIGHTS. A stand-in of that checkpoint, built from
detectron2's own COCO config (80 classes, its model, in the model zoo's pickle format), loads into
our model name for name, hands each Cityscapes class the rows of its COCO class, trains, resumes
and evaluates, tiny, on CPU."""
import math
import os

import pytest
import torch
from conftest import (
    CITYSCAPES_MAP,
    CONFIGS,
    CS_FT_ON_CPU,
    assert_coco_class_rows_transferred,
    save_as_model_zoo_checkpoint,
    class_rows,
    load_config,
)

# our config: detectron2's model-zoo config it fine-tunes from
ZOO_CONFIGS = {
    "cs_ft_R_101_FPN.yaml": "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml",
    "cs_ft_X_101_32x8d_FPN.yaml": "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml",
    "cs_ft_R_50_FPN_gn.yaml": "Misc/mask_rcnn_R_50_FPN_3x_gn.yaml",
    "cs_ft_R_50_FPN_syncbn.yaml": "Misc/mask_rcnn_R_50_FPN_3x_syncbn.yaml",
    "cs_ft_cascade_R_50_FPN.yaml": "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml",
    "cs_ft_R_50_C4.yaml": "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_3x.yaml",
    "cs_ft_R_50_DC5.yaml": "COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_3x.yaml",
}
# What the cs_ft family changes on purpose: 8 classes, COCO weights instead of ImageNet ones, the
# device.
DELIBERATE = {"ROI_HEADS.NUM_CLASSES", "WEIGHTS", "DEVICE"}
ON_CPU = (*CS_FT_ON_CPU, "SOLVER.IMS_PER_BATCH", "2", "TEST.PRECISE_BN.NUM_ITER", "2")


def detectron2_zoo_cfg(zoo_config, *opts):
    """detectron2's own config for the model-zoo entry: get_cfg() + its YAML, nothing of ours."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(zoo_config))
    cfg.merge_from_list(list(opts))
    return cfg


def flat(node, prefix=""):
    out = {}
    for key, value in node.items():
        if hasattr(value, "items"):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


@pytest.mark.parametrize("name", list(ZOO_CONFIGS))
def test_zoo_config_is_detectron2s_coco_model_with_8_classes_and_its_checkpoint(name):
    from detectron2 import model_zoo
    from detectron2.utils.file_io import Detectron2Handler

    ours = load_config(os.path.join(CONFIGS, name))
    theirs = detectron2_zoo_cfg(ZOO_CONFIGS[name])
    # every key of detectron2's MODEL section (ours adds keys of its own, config.py, not compared)
    ours_model, theirs_model = flat(ours.MODEL), flat(theirs.MODEL)
    for key in sorted(set(theirs_model) - DELIBERATE):
        assert ours_model[key] == theirs_model[key], key
    assert (ours.MODEL.ROI_HEADS.NUM_CLASSES, theirs.MODEL.ROI_HEADS.NUM_CLASSES) == (8, 80)
    # the weights: the COCO checkpoint detectron2's model zoo gives for that config
    url = ours.MODEL.WEIGHTS.replace(Detectron2Handler.PREFIX, Detectron2Handler.S3_DETECTRON2_PREFIX)
    assert url == model_zoo.get_checkpoint_url(ZOO_CONFIGS[name])


def test_every_zoo_config_inherits_the_recipe():
    cs_ft = load_config(os.path.join(CONFIGS, "cs_ft.yaml"))
    for name in ZOO_CONFIGS:
        cfg = load_config(os.path.join(CONFIGS, name))
        assert cfg.MODEL.MASK_ON and cfg.MODEL.HEAD_TRANSFER.CLASS_MAP == CITYSCAPES_MAP
        assert cfg.CITYSCAPES_FT.SCHEDULE == cs_ft.CITYSCAPES_FT.SCHEDULE and cfg.DATASETS == cs_ft.DATASETS
        assert cfg.SOLVER == cs_ft.SOLVER and cfg.INPUT == cs_ft.INPUT
        assert cfg.OUTPUT_DIR != cs_ft.OUTPUT_DIR


def coco_model_zoo_stand_in(zoo_config, path):
    """detectron2's model for its COCO config (80 classes), saved as the model zoo saves it: a
    pickle of {"model": {name: numpy array}, "__author__": ...}. The class-specific tensors get
    random values, so that every class's rows differ from every other's."""
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(detectron2_zoo_cfg(zoo_config, "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""))
    return save_as_model_zoo_checkpoint(model, path)


def train_net_in_process(config, *argv):
    from cityscapes_ft.engine import argument_parser, train_or_evaluate

    return train_or_evaluate(argument_parser().parse_args(["--config-file", config, *argv]))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ZOO_CONFIGS))
def test_zoo_config_fine_tunes_from_its_coco_checkpoint_resumes_and_evaluates(name, cityscapes_env, tmp_path):
    from detectron2.data import MetadataCatalog
    from detectron2.modeling import build_model

    from cityscapes_ft.checkpoint import build_checkpointer
    from cityscapes_ft.utils import read_metrics

    config = os.path.join(CONFIGS, name)
    stand_in = str(tmp_path / "model_final_coco.pkl")
    coco = coco_model_zoo_stand_in(ZOO_CONFIGS[name], stand_in)
    if "syncbn" in name:
        assert any(v.ndim == 0 for v in coco.values())  # BatchNorm's num_batches_tracked
    cfg = load_config(config, *ON_CPU)
    model = build_model(cfg)
    ours = model.state_dict()
    # detectron2's COCO model and ours: the same tensors by name, the same shapes but the class rows
    assert set(ours) == set(coco)
    for key, value in coco.items():
        if class_rows(key) is None or value.shape[0] == class_rows(key)[0]:  # class-agnostic
            assert tuple(ours[key].shape) == value.shape, key
    checkpointer = build_checkpointer(cfg, model)
    checkpointer.load(stand_in)
    report = checkpointer.last_load_report
    assert report.fresh == [] and report.unused == [], report.format()
    # each Cityscapes class holds the rows of its COCO class (detectron2's COCO class list), the
    # background row is COCO's, and every other tensor is the checkpoint's
    loaded = model.state_dict()
    transferred = assert_coco_class_rows_transferred(coco, loaded)
    stages = 3 if "cascade" in name else 1
    # cls_score weight and bias per stage, bbox_pred too unless it is class-agnostic, mask predictor
    assert transferred == 2 * stages * (1 if cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG else 2) + 2

    out = str(tmp_path / "run")
    common = [*ON_CPU, "MODEL.WEIGHTS", stand_in, "OUTPUT_DIR", out, "SOLVER.CHECKPOINT_PERIOD", "1",
              "CITYSCAPES_FT.METRICS_PERIOD", "1"]
    train_net_in_process(config, *common, "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()")
    train_net_in_process(config, "--resume", *common, "SOLVER.MAX_ITER", "3", "DATASETS.TEST", "()")
    final = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)
    assert final["iteration"] == 2  # resumed after iteration 1, ran iteration 2
    losses = {r["iteration"]: r["total_loss"] for r in read_metrics(os.path.join(out, "metrics.json"))
              if "total_loss" in r}
    assert sorted(losses) == [0, 1, 2] and all(math.isfinite(v) for v in losses.values()), losses
    # it trained: the box classifier moved away from the checkpoint's rows
    cls_key = next(k for k in coco if k.endswith("cls_score.weight"))
    assert not torch.equal(final["model"][cls_key].cpu(), loaded[cls_key])

    results = train_net_in_process(config, "--eval-only", *common, "MODEL.WEIGHTS",
                                   os.path.join(out, "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "eval"),
                                   "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    assert set(results) == {"cityscapes", "bbox", "segm"}
    names = MetadataCatalog.get(cfg.DATASETS.TEST[0]).thing_classes
    assert {"AP", "AP50"} | {f"AP-{c}" for c in names} <= set(results["cityscapes"])
    for task in ("bbox", "segm"):  # COCOEvaluator's keys
        assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} | {f"AP-{c}" for c in names} <= set(results[task])
