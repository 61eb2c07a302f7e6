"""Demo, data viewer, saved-prediction viewer, curves and the run report."""
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import CONFIGS, FIXTURE, FIXTURE_MAX_ITER, REPO, headless_chromium, load_config
from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances
from PIL import Image

from cityscapes_ft.visualization import draw_instances

TINY = os.path.join(CONFIGS, "quick_schedules", "cs_ft_cpu_tiny.yaml")


def tool(name, *args, datasets, expect_ok=True):
    env = dict(os.environ, DETECTRON2_DATASETS=datasets)
    proc = subprocess.run([sys.executable, os.path.join("tools", name)] + list(args), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f"{name} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


def val_images(root):
    return sorted(glob.glob(os.path.join(root, "cityscapes", "leftImg8bit", "val", "*", "*.png")))


def saved_scores(trained_dir, image):
    """The scores, highest first, of every instance the trained run's last evaluation predicted on
    `image` (a val image): the same weights and test size as the demo, and no score threshold."""
    saved = os.path.join(trained_dir, "inference", "cityscapes_ft_instance_val", "instances_predictions.json")
    (record,) = [r for r in json.load(open(saved)) if os.path.basename(r["file_name"]) == os.path.basename(image)]
    return sorted(record["scores"], reverse=True)


def demo_counts(proc):
    """{input file name: instances predicted} from tools/demo.py's log."""
    return {os.path.basename(path): int(n)
            for path, n in re.findall(r"(\S+): (\d+) instances ->", proc.stderr + proc.stdout)}


def test_instances_are_drawn_in_their_cityscapes_colour():
    meta = MetadataCatalog.get("cityscapes_ft_instance_val")
    image = np.full((64, 128, 3), 128, dtype=np.uint8)
    inst = Instances((64, 128))
    mask = np.zeros((1, 64, 128), dtype=bool)
    mask[0, 20:60, 60:120] = True
    inst.pred_masks = torch.from_numpy(mask)
    inst.pred_boxes = Boxes(torch.tensor([[60.0, 20.0, 120.0, 60.0]]))
    inst.scores = torch.tensor([0.9])
    inst.pred_classes = torch.tensor([2])  # car
    out = draw_instances(image, inst, meta, 0.5)
    inside = out[45:55, 95:110].reshape(-1, 3).mean(0)  # inside the mask, away from text and edges
    expected = 0.5 * 128 + 0.5 * np.array(meta.thing_colors[2])
    np.testing.assert_allclose(inside, expected, atol=12)
    assert (out[:10, :50] == 128).all()  # far from the detection, the picture is untouched
    low = draw_instances(image, inst, meta, 0.95)  # below the threshold: nothing drawn
    assert (low == image).all()


@pytest.mark.slow
def test_demo_draws_images_and_skips_unreadable_ones(trained, synthetic_root, tmp_path):
    """At the demo's default threshold, 0.5, the trained model finds on each image what its
    evaluation found above 0.5 (at least one object), and draws it."""
    out, _ = trained
    inputs = tmp_path / "in"
    inputs.mkdir()
    for p in val_images(synthetic_root)[:3]:
        shutil.copy(p, inputs)
    (inputs / "broken.png").write_bytes(b"not a png")
    proc = tool("demo.py", "--config-file", FIXTURE, "--input", str(inputs), "--output", str(tmp_path / "out"),
                "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"), datasets=synthetic_root)
    assert "broken.png" in proc.stderr + proc.stdout and "Skipped unreadable image" in proc.stderr + proc.stdout
    written = sorted(os.listdir(tmp_path / "out"))
    assert written == sorted(os.path.basename(p) for p in val_images(synthetic_root)[:3])
    expected = {name: sum(s > 0.5 for s in saved_scores(out, name)) for name in written}
    assert demo_counts(proc) == expected and min(expected.values()) >= 1, expected
    for name in written:
        drawn = np.asarray(Image.open(tmp_path / "out" / name).convert("RGB")).astype(int)
        original = np.asarray(Image.open(inputs / name).convert("RGB")).astype(int)
        assert drawn.shape == original.shape
        assert (np.abs(drawn - original).sum(-1) > 30).mean() > 0.005, name  # its detections were drawn


@pytest.mark.slow
def test_demo_video_gives_a_video_with_the_same_frame_count(trained, synthetic_root, tmp_path):
    out, _ = trained
    video = str(tmp_path / "drive.mp4")
    frames = [cv2.imread(p) for p in val_images(synthetic_root)[:5]]
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 5, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()
    tool("demo.py", "--config-file", FIXTURE, "--video-input", video, "--output", str(tmp_path / "vis"),
         "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"), datasets=synthetic_root)
    result = cv2.VideoCapture(str(tmp_path / "vis" / "drive.mp4"))
    count = 0
    while result.read()[0]:
        count += 1
    assert count == 5
    assert int(result.get(cv2.CAP_PROP_FRAME_WIDTH)) == w


@pytest.mark.slow
def test_demo_takes_opts_and_its_threshold_is_the_models(trained, synthetic_root, tmp_path):
    """detectron2's demo spelling: --opts KEY VALUE; --confidence-threshold is the model's test score
    threshold, so the instances predicted (not only drawn) follow it: as many as the trained run's
    evaluation scored above it, at most TEST.DETECTIONS_PER_IMAGE (given after --opts)."""
    image = val_images(synthetic_root)[0]
    weights = os.path.join(trained[0], "model_final.pth")
    scores = saved_scores(trained[0], image)
    above_half = sum(s > 0.5 for s in scores)
    assert 1 <= above_half < 7, scores[:8]
    # thresholds halfway between scores the evaluation saw, so far from any score the demo's run gives
    thresholds = {"0.0": 7, f"{(scores[above_half - 1] + scores[above_half]) / 2:.4f}": above_half,
                  f"{(scores[0] + 1) / 2:.4f}": 0}
    counts = {}
    for threshold in thresholds:
        proc = tool("demo.py", "--config-file", FIXTURE, "--input", image, "--output", str(tmp_path / threshold),
                    "--confidence-threshold", threshold, "--opts", "MODEL.WEIGHTS", weights,
                    "TEST.DETECTIONS_PER_IMAGE", "7", datasets=synthetic_root)
        counts[threshold] = demo_counts(proc)[os.path.basename(image)]
    assert counts == thresholds


@pytest.mark.slow
def test_demo_without_output_and_without_a_display_says_what_to_pass(synthetic_root, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = subprocess.run([sys.executable, "tools/demo.py", "--config-file", TINY, "--input",
                           val_images(synthetic_root)[0], "MODEL.WEIGHTS", ""], cwd=REPO, capture_output=True,
                          text=True, env=dict(env, DETECTRON2_DATASETS=synthetic_root), timeout=300)
    assert proc.returncode == 2 and "pass --output" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_demo_bad_input_is_one_clear_message(synthetic_root, tmp_path):
    proc = tool("demo.py", "--config-file", TINY, "--input", str(tmp_path / "*.png"), "--output", str(tmp_path),
                datasets=synthetic_root, expect_ok=False)
    assert proc.returncode == 2 and "matches no file" in proc.stderr and "Traceback" not in proc.stderr
    proc = tool("demo.py", "--config-file", str(tmp_path / "nope.yaml"), "--input", "x", "--output", str(tmp_path),
                datasets=synthetic_root, expect_ok=False)
    assert proc.returncode == 2 and "nope.yaml" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_visualize_data_defaults_to_the_current_folder_and_show_without_a_display_is_one_message(synthetic_root,
                                                                                                  tmp_path):
    env = dict({k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")},
               DETECTRON2_DATASETS=synthetic_root)
    script = os.path.join(REPO, "tools", "visualize_data.py")
    proc = subprocess.run([sys.executable, script, "--config-file", TINY, "--num-images", "2"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(glob.glob(str(tmp_path / "annotation_*.png"))) == 2  # detectron2's default: ./
    proc = subprocess.run([sys.executable, script, "--config-file", TINY, "--show"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--show needs a display" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("source", ["annotation", "dataloader"])
def test_visualize_data_draws_the_split(synthetic_root, tmp_path, source):
    tool("visualize_data.py", "--config-file", TINY, "--source", source, "--output-dir", str(tmp_path),
         "--num-images", "3", datasets=synthetic_root)
    pictures = sorted(glob.glob(str(tmp_path / f"{source}_*.png")))
    assert len(pictures) == 3
    size = Image.open(pictures[0]).size
    if source == "annotation":
        assert size == (256, 128)
    else:
        assert min(size) in (96, 128)  # INPUT.MIN_SIZE_TRAIN of the tiny config


@pytest.mark.slow
@pytest.mark.parametrize("saved_file", ["instances_predictions.json", "coco_instances_results.json"])
def test_visualize_json_results_draws_saved_predictions_beside_ground_truth(trained, synthetic_root, tmp_path,
                                                                            saved_file):
    out, _ = trained
    saved = os.path.join(out, "inference", "cityscapes_ft_instance_val", saved_file)
    tool("visualize_json_results.py", "--input", saved, "--output", str(tmp_path), "--conf-threshold", "0.0",
         datasets=synthetic_root)
    pictures = sorted(glob.glob(str(tmp_path / "*_pred_gt.png")))
    assert len(pictures) == len(val_images(synthetic_root))
    assert Image.open(pictures[0]).size == (512, 128)  # prediction | ground truth


@pytest.mark.slow
def test_both_saved_prediction_files_hold_the_same_predictions(trained, cityscapes_env):
    from cityscapes_ft.visualization.saved_predictions import load_saved_predictions

    folder = os.path.join(trained[0], "inference", "cityscapes_ft_instance_val")
    ours = load_saved_predictions(os.path.join(folder, "instances_predictions.json"), "cityscapes_ft_instance_val")
    coco = load_saved_predictions(os.path.join(folder, "coco_instances_results.json"), "cityscapes_ft_instance_val")
    coco = {p["file_name"]: p for p in coco}
    assert sum(len(p["scores"]) for p in ours) > 0
    for p in ours:
        q = coco[p["file_name"]]
        assert q["classes"] == p["classes"] and q["scores"] == p["scores"] and q["masks"] == p["masks"]
        assert np.allclose(q["boxes"], p["boxes"], atol=1e-3) and len(q["boxes"]) == len(p["boxes"])


@pytest.mark.slow
def test_training_leaves_curves_report_and_tensorboard_events(trained):
    out, _ = trained
    assert glob.glob(os.path.join(out, "events.out.tfevents.*"))
    curves = Image.open(os.path.join(out, "training_curves.png"))
    assert curves.size[0] > 800
    assert len(glob.glob(os.path.join(out, "predictions", "*_pred_vs_gt.png"))) == 2
    html = open(os.path.join(out, "report.html")).read()
    assert "Official Cityscapes metric" in html and "COCO-style mask AP" in html
    assert html.count("data:image/png;base64,") == 3  # curves + 2 pictures, all embedded
    # the schedule the run resolved: 150 iterations of batch 2 over the 8 training images
    assert "Training schedule" in html
    assert f"<td>max iterations</td><td>{FIXTURE_MAX_ITER} ({FIXTURE_MAX_ITER * 2 / 8:.2f} epochs)</td>" in html
    assert "<td>training images after filtering</td><td>8</td>" in html
    # the training set per class, as the log stated it at start
    training_set = json.load(open(os.path.join(out, "training_set.json")))
    assert training_set["images"] == 8 and "Training set" in html
    for row in training_set["classes"]:
        assert f"<tr><td>{row['class']}</td><td>{row['instances']}</td><td>{row['images']}</td>" in html


@pytest.mark.slow
def test_report_renders_in_headless_chromium(trained, chromium, tmp_path):
    out, _ = trained
    url = "file://" + os.path.join(out, "report.html")
    dom = headless_chromium(chromium, url, tmp_path / "profile", "--dump-dom").stdout
    assert dom.count("<table class=\"per-class\"") == 3
    assert "<td>rider</td>" in dom and "Training curves" in dom
    shot = tmp_path / "report.png"
    headless_chromium(chromium, url, tmp_path / "profile", "--window-size=1200,2400", f"--screenshot={shot}")
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert (pixels < 200).mean() > 0.05  # tables, curves and pictures were painted, not a blank page


@pytest.mark.parametrize("input_format", ["BGR", "RGB"])
def test_instance_predictor_is_detectron2s_default_predictor_on_a_model_in_hand(cityscapes_env, tmp_path,
                                                                              input_format):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import DefaultPredictor
    from detectron2.modeling import build_model

    from cityscapes_ft.visualization import InstancePredictor

    cfg = load_config(TINY, "INPUT.FORMAT", input_format, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    torch.manual_seed(0)
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("weights")
    cfg.MODEL.WEIGHTS = str(tmp_path / "weights.pth")
    image = cv2.imread(val_images(cityscapes_env)[0])  # BGR, as both take it
    model.train()
    ours = InstancePredictor(cfg, model)(image)["instances"]
    assert model.training  # the mode it found is put back
    theirs = DefaultPredictor(cfg)(image)["instances"]
    assert len(ours) == len(theirs) > 0
    torch.testing.assert_close(ours.pred_boxes.tensor, theirs.pred_boxes.tensor)
    torch.testing.assert_close(ours.scores, theirs.scores)
