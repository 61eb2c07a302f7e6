"""Test-time augmentation (TEST.AUG) through detectron2's GeneralizedRCNNWithTTA, with its results
named apart from the plain ones as detectron2's train_net.py names them."""
import glob
import json
import os

import pytest
from conftest import (FIXTURE, FIXTURE_MAX_ITER, TINY, assert_far_from_0_and_100, evaluation_of, load_config,
                      train_net)
from detectron2.data import DatasetCatalog

from cityscapes_ft.engine.trainer import CityscapesFTTrainer

TTA = ("TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(96, 128)", "TEST.AUG.MAX_SIZE", "400",
       "TEST.AUG.FLIP", "True")


@pytest.mark.slow
def test_tta_predicts_on_every_augmented_image_and_names_results_apart(cityscapes_env, tmp_path):
    cfg = load_config(TINY, "OUTPUT_DIR", str(tmp_path), "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", *TTA)
    model = CityscapesFTTrainer.build_model(cfg)
    model.eval()
    images_seen = []
    backbone_forward = model.backbone.forward
    model.backbone.forward = lambda x: (images_seen.append(x.shape[0]), backbone_forward(x))[1]
    results = CityscapesFTTrainer.test_with_TTA(cfg, model, iteration=5)
    assert set(results) == {"cityscapes_TTA", "bbox_TTA", "segm_TTA"}
    assert 0 <= results["segm_TTA"]["AP"] <= 100
    images = len(DatasetCatalog.get(cfg.DATASETS.TEST[0]))
    # two sizes, each also flipped: four inputs per image (and the mask pass sees them again)
    assert sum(images_seen) % (4 * images) == 0 and sum(images_seen) >= 4 * images
    dataset = cfg.DATASETS.TEST[0]
    record = json.load(open(tmp_path / "eval_results" / f"{dataset}_TTA_iter0000005.json"))
    assert record["iteration"] == 5 and set(record["results"]) == {"cityscapes", "bbox", "segm"}
    assert os.path.isfile(tmp_path / "inference_TTA" / dataset / "coco_instances_results.json")
    assert not os.path.exists(tmp_path / "inference")  # the plain evaluation's folder is its own


@pytest.mark.slow
def test_eval_only_with_tta_reports_both(trained, synthetic_root, tmp_path):
    """The plain evaluation is the trained run's own at its end (same weights and config); the
    augmented one, of the same model, finds objects too."""
    out, _ = trained
    proc = train_net("--eval-only", "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"), "OUTPUT_DIR",
                     str(tmp_path), *TTA, config=FIXTURE, datasets=synthetic_root)
    names = {os.path.basename(p) for p in glob.glob(str(tmp_path / "eval_results" / "*.json"))}
    assert names == {f"cityscapes_ft_instance_val_iter{FIXTURE_MAX_ITER:07d}.json",
                     f"cityscapes_ft_instance_val_TTA_iter{FIXTURE_MAX_ITER:07d}.json"}
    during_training = evaluation_of(out, FIXTURE_MAX_ITER)["results"]
    plain = evaluation_of(str(tmp_path), FIXTURE_MAX_ITER)["results"]
    augmented = evaluation_of(str(tmp_path), FIXTURE_MAX_ITER, "cityscapes_ft_instance_val_TTA")["results"]
    assert_far_from_0_and_100(*(during_training[task]["AP"] for task in ("cityscapes", "bbox", "segm")))
    assert plain == during_training
    assert_far_from_0_and_100(*(augmented[task]["AP"] for task in ("cityscapes", "bbox", "segm")))
    assert "Evaluating with test-time augmentation" in proc.stderr + proc.stdout
    assert os.path.isdir(tmp_path / "inference" / "cityscapes_ft_instance_val")
    assert os.path.isdir(tmp_path / "inference_TTA" / "cityscapes_ft_instance_val")
