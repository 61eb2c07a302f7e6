"""tools/export_model.py: ONNX and TorchScript exports that predict what the PyTorch model predicts,
a runner that needs neither detectron2 nor this package, AP parity written to export_eval.json,
and one-line refusals; detectron2.export importable on a v0.6 that lacks caffe2."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import (FIXTURE, FIXTURE_MAX_ITER, REPO, TINY, assert_far_from_0_and_100, evaluation_of,
                      load_config, run)

SAME_AS_TRAINED_EVAL = ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")


def tiny_checkpoint(path, cfg):
    from cityscapes_ft.engine import CityscapesFTTrainer

    torch.manual_seed(0)
    torch.save({"model": CityscapesFTTrainer.build_model(cfg).state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def torchscript_export(tmp_path_factory):
    """The tiny config's model (random weights, every detection kept) exported as TorchScript."""
    from cityscapes_ft.export import export_model

    folder = tmp_path_factory.mktemp("export_ts")
    cfg = load_config(TINY, *SAME_AS_TRAINED_EVAL)
    cfg.MODEL.WEIGHTS = tiny_checkpoint(folder / "weights.pth", cfg)
    meta = export_model(cfg, str(folder / "export"), "torchscript")
    return cfg, str(folder / "export"), meta


def test_torchscript_export_predicts_what_the_model_predicts(torchscript_export):
    """On the export's own check image and on an image of another size (the graph is not tied to
    the traced size): same detections, boxes, scores and mask probabilities."""
    from cityscapes_ft.export import ExportedMaskRCNN
    from cityscapes_ft.checkpoint import load_model
    from cityscapes_ft.export.exporter import _network_outputs

    cfg, folder, meta = torchscript_export
    assert meta["check"]["detections"] == meta["check"]["detections_exported"] > 0
    model, exported = load_model(cfg, strict=True), ExportedMaskRCNN(folder)
    image = torch.randint(0, 256, (3, 96, 200)).float()
    with torch.no_grad():
        expected = _network_outputs(model, image)
    got = exported.run_network(image)
    assert len(expected[0]) == len(got[0]) > 0
    for a, b in zip(expected, got):
        torch.testing.assert_close(b.to(a.dtype), a, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_runner_needs_neither_detectron2_nor_this_package(torchscript_export, tmp_path):
    """cityscapes_ft_runtime.py, run where importing detectron2 or cityscapes_ft fails, predicts on
    an image at the test size what detectron2's own DefaultPredictor (built from the same config and
    weights) predicts: the same classes, boxes and scores, and each mask the same pixels as
    DefaultPredictor's pasted mask (IoU at least 0.99; one pixel apart at most under 100 pixels)."""
    import cv2
    from detectron2.engine import DefaultPredictor

    cfg, folder, _ = torchscript_export
    rng = np.random.default_rng(1)
    image_bgr = rng.integers(0, 256, (128, 256, 3), dtype=np.uint8)  # the tiny config's test size
    frame, predictions, masks = (str(tmp_path / n) for n in ("frame.png", "predictions.json", "masks.pt"))
    cv2.imwrite(frame, image_bgr)
    runtime = os.path.join(folder, "cityscapes_ft_runtime.py")
    # the command line writes predictions.json; its predictor, called in Python, gives the masks
    script = ("import runpy, sys, torch; sys.modules['detectron2'] = None; sys.modules['cityscapes_ft'] = None; "
              f"sys.argv = ['runner', {folder!r}, '--input', {frame!r}, '--output', {predictions!r}, "
              "'--score-threshold', '0']; "
              f"runpy.run_path({runtime!r}, run_name='__main__'); "
              f"rt = runpy.run_path({runtime!r}); predictor = rt['ExportedMaskRCNN']({folder!r}); "
              f"torch.save(predictor(rt['read_image']({frame!r}, predictor.meta['input_format']))['masks'], "
              f"{masks!r})")
    proc = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=""))
    assert proc.returncode == 0, proc.stderr[-3000:]
    predicted = json.load(open(predictions))[0]["instances"]
    predicted_masks = torch.load(masks).numpy()
    assert [p["mask_area"] for p in predicted] == predicted_masks.sum(axis=(1, 2)).tolist()
    assert (predicted_masks.sum(axis=(1, 2)) > 0).mean() > 0.5  # masks with pixels to compare

    assert cfg.MODEL.WEIGHTS.endswith("weights.pth") and cfg.INPUT.FORMAT == "BGR"
    reference = DefaultPredictor(cfg)(image_bgr)["instances"].to("cpu")
    assert len(predicted) == len(reference) > 0
    names = cfg_class_names()
    for ours, mask, box, score, cls, ref_mask in zip(predicted, predicted_masks, reference.pred_boxes.tensor,
                                                      reference.scores, reference.pred_classes,
                                                      reference.pred_masks.numpy()):
        assert ours["class"] == names[int(cls)]
        assert ours["score"] == pytest.approx(float(score), abs=1e-3)
        np.testing.assert_allclose(ours["box_xyxy"], box.tolist(), atol=0.02)
        # the same pixels, up to 1% of the union (IoU >= 0.99), or one pixel for masks under 100
        union = int((mask | ref_mask).sum())
        assert int((mask != ref_mask).sum()) <= max(1, 0.01 * union), (ours, int(ref_mask.sum()))


def cfg_class_names():
    from cityscapes_ft.data import CITYSCAPES_THING_CLASSES

    return CITYSCAPES_THING_CLASSES


def test_runner_resize_is_detectron2s_test_resize():
    """The runner's resize against detectron2's ResizeShortestEdge (the test loader's): the same
    output size for Cityscapes frames and odd sizes, pixel values within rounding of PIL's."""
    from detectron2.data import transforms as T

    from cityscapes_ft.export.runtime import resize_image, resized_shape

    for (h, w), (short, longest) in [((1024, 2048), (1024, 2048)), ((1024, 2048), (800, 1333)),
                                     ((375, 1242), (512, 1024)), ((333, 500), (128, 256)), ((700, 300), (96, 192))]:
        image = np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8)
        expected = T.ResizeShortestEdge(short, longest).get_transform(image).apply_image(image)
        assert resized_shape(h, w, short, longest) == expected.shape[:2]
        ours = resize_image(torch.as_tensor(image).permute(2, 0, 1), expected.shape[:2]).permute(1, 2, 0).numpy()
        assert np.abs(ours - expected.astype(np.float32)).mean() < 1.0


@pytest.mark.slow
def test_onnx_export_evaluated_beside_the_original_agrees_within_0_1_ap(trained, synthetic_root, tmp_path):
    """tools/export_model.py --eval on the trained model: export_eval.json holds official and COCO
    AP of both models on the val split, within 0.1 of each other, and their CPU times; the
    exported model's pictures come out of tools/demo.py --exported."""
    out, _ = trained
    run(["tools/export_model.py", "--config-file", FIXTURE, "--output", str(tmp_path / "export"), "--eval",
         "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"), *SAME_AS_TRAINED_EVAL], synthetic_root)
    report = json.load(open(tmp_path / "export" / "export_eval.json"))
    assert report["format"] == "onnx" and report["dataset"] == "cityscapes_ft_instance_val"
    original, exported = report["original"], report["exported"]
    assert original["images"] == exported["images"] == 6
    assert_far_from_0_and_100(*(original[task]["AP"] for task in ("cityscapes", "bbox", "segm")))
    for task, keys in {"cityscapes": ("AP", "AP50"), "bbox": ("AP", "AP50", "AP75"), "segm": ("AP", "AP50")}.items():
        for key in keys:
            assert abs(original[task][key] - exported[task][key]) <= 0.1, (task, key, original[task], exported[task])
    # the trained evaluation (same weights, same threshold) saw the same official AP as the original here
    trained_eval = evaluation_of(out, FIXTURE_MAX_ITER)["results"]["cityscapes"]
    assert original["cityscapes"]["AP"] == pytest.approx(trained_eval["AP"], abs=1e-9)
    assert original["seconds_per_image"] > 0 and exported["seconds_per_image"] > 0
    meta = json.load(open(tmp_path / "export" / "export_meta.json"))
    assert meta["check"]["detections"] == meta["check"]["detections_exported"] > 0
    assert meta["check"]["max_abs_difference_boxes"] < 0.05

    image = os.path.join(synthetic_root, "cityscapes", "leftImg8bit", "val")
    run(["tools/demo.py", "--config-file", FIXTURE, "--exported", str(tmp_path / "export"), "--input", image,
         "--output", str(tmp_path / "pictures"), "--confidence-threshold", "0.0"], synthetic_root)
    assert len(os.listdir(tmp_path / "pictures")) == 6


@pytest.mark.slow
def test_refusals_are_one_named_line(synthetic_root, tmp_path):
    """torch.export (data-dependent shapes), a config without a mask head, and weights of another
    class count: each stops with one `error:` line saying what and why, no traceback."""
    cfg = load_config(TINY)
    weights = tiny_checkpoint(tmp_path / "w.pth", cfg)
    common = ["tools/export_model.py", "--config-file", TINY, "--output", str(tmp_path / "x")]
    cases = [
        (["--format", "torch_export", "MODEL.WEIGHTS", weights], "--format torch_export cannot export"),
        (["MODEL.WEIGHTS", weights, "MODEL.MASK_ON", "False"], "MODEL.MASK_ON"),
        (["MODEL.WEIGHTS", tiny_checkpoint(tmp_path / "w80.pth", load_config(TINY, "MODEL.ROI_HEADS.NUM_CLASSES", "80"))],
         "roi_heads.box_predictor.cls_score"),
    ]
    for args, expected in cases:
        proc = run(common + args, synthetic_root, expect_ok=False)
        assert proc.returncode != 0
        assert expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not os.path.exists(tmp_path / "x" / "model.pt2")


@pytest.mark.slow
def test_detectron2_export_importable_where_v06_fails_for_want_of_caffe2():
    """A v0.6 whose detectron2.export fails at `from .api import *` (no caffe2, as torch 2 ships
    none): our import gives TracingAdapter, and detectron2.utils.analysis imports after it."""
    script = """
import importlib.abc, importlib.machinery, sys
class V06ExportInit(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    # detectron2.export's __init__ as v0.6 has it, on this machine: its first line, `from .api
    # import *`, raises what it raises where caffe2 is missing.
    def find_spec(self, name, path, target=None):
        if name == "detectron2.export":
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            spec.loader = self
            return spec
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        raise ModuleNotFoundError("No module named 'caffe2'", name="caffe2")
sys.meta_path.insert(0, V06ExportInit())
try:
    import detectron2.export
    raise SystemExit("the simulated v0.6 import did not fail")
except ModuleNotFoundError:
    pass
from cityscapes_ft.compat import import_detectron2_analysis, import_detectron2_export
export = import_detectron2_export()
analysis = import_detectron2_analysis()
print(export.TracingAdapter.__module__, analysis.FlopCountAnalysis.__name__)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["detectron2.export.flatten", "FlopCountAnalysis"]


def test_export_needs_the_weights_it_exports(tmp_path):
    """No MODEL.WEIGHTS (a config's default here): refused before anything is built or written."""
    from cityscapes_ft.errors import WeightsNotAvailable
    from cityscapes_ft.export import export_model

    with pytest.raises(WeightsNotAvailable, match="MODEL.WEIGHTS is empty"):
        export_model(load_config(TINY), str(tmp_path / "x"))
    assert not os.path.exists(tmp_path / "x")
