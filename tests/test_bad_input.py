"""Bad data, bad configuration and bad numbers each end in one clear message naming the problem."""
import glob
import json
import logging
import os
import shutil

import pytest
import torch
from conftest import CONFIGS, load_config
from detectron2.modeling import build_model

from cityscapes_ft.checkpoint import build_checkpointer
from cityscapes_ft.data import CityscapesDataError, load_cityscapes_ft_instances
from cityscapes_ft.data.synthetic import make_synthetic_cityscapes
from cityscapes_ft.errors import ConfigNotRunnable

TINY = os.path.join(CONFIGS, "quick_schedules", "cs_ft_cpu_tiny.yaml")


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean") / "cityscapes"
    make_synthetic_cityscapes(str(root), 6, 0, 128, 64, seed=11, log=lambda *_: None)
    return root


@pytest.fixture
def root(clean_root, tmp_path):
    copy = tmp_path / "cityscapes"
    shutil.copytree(clean_root, copy)
    return copy


def jsons(root):
    return sorted(glob.glob(str(root / "gtFine" / "train" / "*" / "*_polygons.json")))


def images(root):
    return sorted(glob.glob(str(root / "leftImg8bit" / "train" / "*" / "*.png")))


def edit_json(path, change):
    data = json.load(open(path))
    change(data)
    json.dump(data, open(path, "w"))


def first_thing(data):
    return next(o for o in data["objects"] if o["label"] in ("person", "car", "bus", "truck", "train", "rider", "bicycle", "motorcycle"))


BREAKAGES = {
    "invalid JSON": (lambda r: open(jsons(r)[0], "w").write('{"imgHeight": 64, "objects": ['),
                     lambda r: (jsons(r)[0], "not a Cityscapes polygons file")),
    "unknown label": (lambda r: edit_json(jsons(r)[1], lambda d: first_thing(d).update(label="spaceship")),
                      lambda r: (jsons(r)[1], "unknown label 'spaceship'")),
    "polygon under 3 points": (lambda r: edit_json(jsons(r)[2], lambda d: first_thing(d).update(polygon=[[1, 1], [5, 5]])),
                               lambda r: (jsons(r)[2], "at least 3 [x, y] points")),
    "outside the image": (lambda r: edit_json(jsons(r)[3], lambda d: first_thing(d)["polygon"].append([500, 30])),
                          lambda r: (jsons(r)[3], "coordinates outside the 128x64 image")),
    "unreadable PNG": (lambda r: open(images(r)[4], "wb").write(b"\x89PNG not really"),
                       lambda r: (images(r)[4], "Unreadable image")),
    "annotation without image": (lambda r: os.remove(images(r)[5]),
                                 lambda r: (jsons(r)[5], "Image missing for annotation file")),
}


@pytest.mark.parametrize("case", list(BREAKAGES))
def test_each_bad_sample_is_named_with_what_was_wrong(root, case):
    breakage, expect = BREAKAGES[case]
    expected = expect(root)
    breakage(root)
    with pytest.raises(CityscapesDataError) as e:
        load_cityscapes_ft_instances(str(root), "train")
    path, what = expected
    assert path in str(e.value) and what in str(e.value)


def test_skip_mode_leaves_bad_samples_out_and_lists_them(root, caplog):
    expected = [expect(root)[0] for _, expect in BREAKAGES.values()]
    for breakage, _ in BREAKAGES.values():
        breakage(root)
    with pytest.raises(CityscapesDataError, match="No usable samples"):
        load_cityscapes_ft_instances(str(root), "train", on_bad_sample="skip")
    make_synthetic_cityscapes(str(root / "more"), 3, 0, 128, 64, seed=12, log=lambda *_: None)
    shutil.copytree(root / "more" / "leftImg8bit" / "train" / "aachen", root / "leftImg8bit" / "train" / "extra")
    shutil.copytree(root / "more" / "gtFine" / "train" / "aachen", root / "gtFine" / "train" / "extra")
    with caplog.at_level(logging.WARNING):
        dicts = load_cityscapes_ft_instances(str(root), "train", on_bad_sample="skip")
    assert len(dicts) == 2  # the two good "extra" images
    assert "Skipped 6 bad samples" in caplog.text
    for path in expected:
        assert path in caplog.text


@pytest.mark.slow
def test_training_can_skip_bad_samples_from_the_command_line(root, tmp_path):
    from test_train_net_cli import train_net

    BREAKAGES["unknown label"][0](root)
    datasets = str(root.parent)
    failed = train_net("OUTPUT_DIR", str(tmp_path / "a"), "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()",
                       datasets=datasets, expect_ok=False)
    assert failed.returncode == 2 and "unknown label 'spaceship'" in failed.stderr
    ok = train_net("OUTPUT_DIR", str(tmp_path / "b"), "CITYSCAPES_FT.ON_BAD_SAMPLE", "skip",
                   "DATASETS.TEST", "()", datasets=datasets)
    assert "Skipped 1 bad samples" in ok.stdout + ok.stderr
    assert os.path.isfile(tmp_path / "b" / "model_final.pth")


def test_weights_of_another_architecture_are_refused_with_what_did_not_fit(tmp_path):
    r18 = build_model(load_config(TINY)).state_dict()
    torch.save({"model": r18}, tmp_path / "r18.pth")
    cfg = load_config(os.path.join(CONFIGS, "cs_ft.yaml"), "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "")
    r50 = build_model(cfg)
    # what the two state dicts say: the R50's tensors the R18 checkpoint has no tensor for, by
    # name and shape
    ours = r50.state_dict()
    nothing = [k for k, v in ours.items() if k not in r18 or r18[k].shape != v.shape]
    assert len(ours) / 2 < len(nothing) < len(ours) and "backbone.fpn_lateral2.weight" in nothing
    with pytest.raises(ConfigNotRunnable) as e:
        build_checkpointer(cfg, r50).load(str(tmp_path / "r18.pth"))
    msg = str(e.value)
    assert "do not fit this model" in msg and "r18.pth" in msg and "shape mismatches" in msg
    assert f"{len(nothing)} of {len(ours)} model tensors found nothing to load" in msg
    assert "backbone.fpn_lateral2.weight" in msg


@pytest.mark.slow
def test_unwritable_output_dir_is_refused_before_any_work(synthetic_root, tmp_path):
    from test_train_net_cli import train_net

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = train_net("OUTPUT_DIR", str(blocker / "out"), datasets=synthetic_root, expect_ok=False)
    assert proc.returncode == 2 and "cannot be written" in proc.stderr and str(blocker) in proc.stderr
    assert "Loaded" not in proc.stdout + proc.stderr  # stopped before reading the dataset


@pytest.mark.slow
def test_nan_loss_stops_with_iteration_terms_and_last_good_checkpoint(synthetic_root, tmp_path):
    from test_train_net_cli import train_net

    proc = train_net("OUTPUT_DIR", str(tmp_path), "SOLVER.BASE_LR", "1e12", "SOLVER.WARMUP_ITERS", "0",
                     "SOLVER.MAX_ITER", "30", "SOLVER.STEPS", "(29,)", "SOLVER.CHECKPOINT_PERIOD", "1",
                     "TEST.EVAL_PERIOD", "0", datasets=synthetic_root, expect_ok=False)
    assert proc.returncode == 2
    last_line = proc.stderr.strip().splitlines()[-1]
    assert "the loss is NaN or infinite" in last_line and "'loss_cls':" in last_line
    assert "Training stopped at iteration" in last_line
    last = open(tmp_path / "last_checkpoint").read().strip()
    assert last in last_line
    ckpt = torch.load(tmp_path / last, map_location="cpu", weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
