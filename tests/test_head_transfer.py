"""COCO model-zoo checkpoints -> 8 Cityscapes classes, row by row, with a load report."""
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from conftest import CONFIGS, load_config
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from cityscapes_ft.checkpoint import ClassMapError, build_checkpointer

COCO = MetadataCatalog.get("coco_2017_train").thing_classes
CITYSCAPES_MAP = ("person", "person", "car", "truck", "bus", "train", "motorcycle", "bicycle")
HEADS = {
    "roi_heads.box_predictor.cls_score": 1,
    "roi_heads.box_predictor.bbox_pred": 4,
    "roi_heads.mask_head.predictor": 1,
}


def tiny_cfg(*opts):
    return load_config(os.path.join(CONFIGS, "quick_schedules", "cs_ft_cpu_tiny.yaml"), *opts)


@pytest.fixture(scope="module")
def coco_zoo_pkl(tmp_path_factory):
    """A checkpoint in detectron2 model-zoo format: pickled numpy arrays, 81-way cls_score,
    320-row bbox_pred, 80-channel mask predictor, random values everywhere."""
    torch.manual_seed(1)
    model = build_model(tiny_cfg("MODEL.ROI_HEADS.NUM_CLASSES", "80"))
    rng = np.random.default_rng(0)
    state = {k: rng.normal(size=tuple(v.shape)).astype(np.float32) for k, v in model.state_dict().items()}
    assert state["roi_heads.box_predictor.cls_score.weight"].shape[0] == 81
    assert state["roi_heads.box_predictor.bbox_pred.weight"].shape[0] == 320
    assert state["roi_heads.mask_head.predictor.weight"].shape[0] == 80
    path = tmp_path_factory.mktemp("zoo") / "model_final_coco.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "test", "matching_heuristics": True}, f)
    return str(path), state


def load(cfg, path):
    torch.manual_seed(2)
    model = build_model(cfg)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    checkpointer = build_checkpointer(cfg, model)
    checkpointer.load(path)
    return model, fresh, checkpointer.last_load_report


def test_each_class_takes_its_source_rows_background_included(coco_zoo_pkl):
    path, src = coco_zoo_pkl
    model, _, report = load(tiny_cfg("MODEL.HEAD_TRANSFER.CLASS_MAP", str(CITYSCAPES_MAP)), path)
    state = model.state_dict()
    for prefix, per_class in HEADS.items():
        for suffix in ("weight", "bias"):
            got = state[f"{prefix}.{suffix}"].numpy()
            want = src[f"{prefix}.{suffix}"]
            for t, name in enumerate(CITYSCAPES_MAP):
                s = COCO.index(name)
                np.testing.assert_array_equal(got[t * per_class : (t + 1) * per_class],
                                              want[s * per_class : (s + 1) * per_class])
            if prefix.endswith("cls_score"):
                np.testing.assert_array_equal(got[8], want[80])  # background stays last
                assert got.shape[0] == 9
    # rider (1) comes from person (0)
    np.testing.assert_array_equal(state["roi_heads.mask_head.predictor.weight"][1].numpy(),
                                  src["roi_heads.mask_head.predictor.weight"][0])
    # class-agnostic layers load as they are
    np.testing.assert_array_equal(state["roi_heads.box_head.fc1.weight"].numpy(), src["roi_heads.box_head.fc1.weight"])
    assert len(report.transferred) == 6 and not report.fresh and not report.unused
    assert len(report.loaded) + 6 == len(state)
    assert ("rider", "person") in report.class_pairs and ("car", "car") in report.class_pairs


def test_unmapped_class_is_freshly_initialised(coco_zoo_pkl):
    path, src = coco_zoo_pkl
    class_map = ("person", "", "car", "truck", "bus", "train", "motorcycle", "bicycle")
    model, fresh, report = load(tiny_cfg("MODEL.HEAD_TRANSFER.CLASS_MAP", str(class_map)), path)
    w = "roi_heads.box_predictor.bbox_pred.weight"
    torch.testing.assert_close(model.state_dict()[w][4:8], fresh[w][4:8], rtol=0, atol=0)
    np.testing.assert_array_equal(model.state_dict()[w][8:12].numpy(), src[w][8:12])  # car
    assert w in report.partly_fresh and ("rider", None) in report.class_pairs
    assert "rider <- (fresh)" in report.format()


def test_without_a_map_it_loads_like_plain_detectron2(coco_zoo_pkl):
    path, src = coco_zoo_pkl
    model, fresh, report = load(tiny_cfg(), path)
    heads = {f"{p}.{s}" for p in HEADS for s in ("weight", "bias")}
    assert set(report.fresh) == heads and not report.transferred
    for k in heads:
        torch.testing.assert_close(model.state_dict()[k], fresh[k], rtol=0, atol=0)


def test_transfer_leaves_no_shape_mismatch_warnings(coco_zoo_pkl, caplog):
    path, _ = coco_zoo_pkl
    with caplog.at_level(logging.WARNING):
        load(tiny_cfg("MODEL.HEAD_TRANSFER.CLASS_MAP", str(CITYSCAPES_MAP)), path)
    assert "incompatible shapes" not in caplog.text and "will not be loaded" not in caplog.text


def test_checkpoint_with_the_target_classes_is_not_remapped(tmp_path):
    cfg = tiny_cfg("MODEL.HEAD_TRANSFER.CLASS_MAP", str(CITYSCAPES_MAP))
    torch.manual_seed(5)
    trained = build_model(cfg)
    torch.save({"model": trained.state_dict()}, tmp_path / "ours.pth")
    model, _, report = load(cfg, str(tmp_path / "ours.pth"))
    for k, v in trained.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    assert not report.transferred and not report.fresh


def test_map_naming_a_class_the_checkpoint_lacks_fails_clearly():
    bad = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
    with pytest.raises(ClassMapError, match="'rider' to 'rider', which is not a class of the checkpoint"):
        build_checkpointer(tiny_cfg("MODEL.HEAD_TRANSFER.CLASS_MAP", str(bad)), build_model(tiny_cfg()))
    with pytest.raises(ClassMapError, match="has 2 entries but the model has 8 classes"):
        build_checkpointer(tiny_cfg("MODEL.HEAD_TRANSFER.CLASS_MAP", "('person', 'car')"), build_model(tiny_cfg()))


def test_class_ids_and_other_source_classes_work(coco_zoo_pkl):
    path, src = coco_zoo_pkl
    ids = ("0", "0", "2", "7", "5", "6", "3", "1")  # COCO contiguous ids of the same classes
    model, _, report = load(tiny_cfg("MODEL.HEAD_TRANSFER.CLASS_MAP", str(ids)), path)
    w = "roi_heads.box_predictor.cls_score.weight"
    np.testing.assert_array_equal(model.state_dict()[w][3].numpy(), src[w][7])  # truck
    assert len(report.transferred) == 6


def test_cs_ft_config_maps_rider_to_person():
    cfg = load_config(os.path.join(CONFIGS, "cs_ft.yaml"))
    assert tuple(cfg.MODEL.HEAD_TRANSFER.CLASS_MAP) == CITYSCAPES_MAP
    assert cfg.MODEL.HEAD_TRANSFER.SOURCE_DATASET == "coco_2017_train"


@pytest.mark.slow
def test_train_net_loads_a_zoo_pkl_with_the_report_in_the_log(coco_zoo_pkl, synthetic_root, tmp_path):
    from test_train_net_cli import train_net

    path, _ = coco_zoo_pkl
    proc = train_net("--eval-only", "MODEL.WEIGHTS", path, "MODEL.HEAD_TRANSFER.CLASS_MAP",
                     str(CITYSCAPES_MAP), "OUTPUT_DIR", str(tmp_path), datasets=synthetic_root)
    log = open(tmp_path / "log.txt").read()
    assert f"Load report for {path}" in log
    assert "transferred by class map:  6 tensors" in log
    assert "rider <- person" in log and "bicycle <- bicycle" in log
    assert "freshly initialised:       0 tensors" in log
    assert "incompatible shapes" not in log
    assert proc.returncode == 0
