"""Our evaluator's numbers are the official scripts' numbers on the same predictions, to the digit,
including the edge cases cityscapesscripts is known for."""
import contextlib
import glob
import io
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as cs_eval
from cityscapesscripts.evaluation.instances2dict import instances2dict
from cityscapesscripts.preparation.json2instanceImg import json2instanceImg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, Instances
from PIL import Image

from conftest import detectron2_cityscapes_evaluator_works, run
from cityscapes_ft.data import register_cityscapes_ft_instances
from cityscapes_ft.data.synthetic import make_synthetic_cityscapes
from cityscapes_ft.evaluation import CityscapesInstanceSegEvaluator
from cityscapes_ft.evaluation.masks import encode_masks
from cityscapes_ft.evaluation.official_parallel import match_image_in_memory, write_prediction_masks

LABEL_IDS = [24, 25, 26, 27, 28, 31, 32, 33]


def noisy_predictions(d, rng, skip_class=None, extra_class=None, empty=False):
    """Ground-truth instances shifted by a few pixels, some dropped, random scores, plus false
    positives: a realistic mix of hits and misses."""
    ids = np.asarray(Image.open(d["instance_ids_file"]))
    h, w = ids.shape
    masks, classes = [], []
    if not empty:
        for i in np.unique(ids):
            if i < 1000 or i // 1000 not in LABEL_IDS or rng.random() < 0.2:
                continue
            c = LABEL_IDS.index(i // 1000)
            if c == skip_class:
                continue
            m = np.roll(ids == i, (rng.integers(-3, 4), rng.integers(-3, 4)), axis=(0, 1))
            masks.append(m)
            classes.append(c)
        for _ in range(3):  # false positives
            m = np.zeros((h, w), bool)
            y, x = rng.integers(0, h - 20), rng.integers(0, w - 30)
            m[y : y + 20, x : x + 30] = True
            masks.append(m)
            classes.append(int(rng.integers(0, 8)) if extra_class is None else extra_class)
    inst = Instances((h, w))
    inst.pred_masks = torch.as_tensor(np.stack(masks) if masks else np.zeros((0, h, w), bool))
    boxes = [[np.nonzero(m)[1].min(), np.nonzero(m)[0].min(), np.nonzero(m)[1].max() + 1, np.nonzero(m)[0].max() + 1]
             for m in masks]
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(rng.random(len(masks)), dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return {"instances": inst}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalset") / "cityscapes"
    make_synthetic_cityscapes(str(root), 0, 8, 256, 128, seed=21, log=lambda *_: None)
    # No "train" anywhere in this split: a class that has no ground truth. Void regions as in real
    # Cityscapes, drawn over objects: the ego vehicle along the bottom and a static block.
    for path in glob.glob(str(root / "gtFine" / "val" / "*" / "*_polygons.json")):
        data = json.load(open(path))
        h, w = data["imgHeight"], data["imgWidth"]
        data["objects"] = [o for o in data["objects"] if o["label"] != "train"] + [
            {"label": "ego vehicle", "polygon": [[0, h - 10], [w - 1, h - 14], [w - 1, h - 1], [0, h - 1]]},
            {"label": "static", "polygon": [[w // 3, h // 3], [w // 2, h // 3], [w // 2, h // 2], [w // 3, h // 2]]},
        ]
        json.dump(data, open(path, "w"))
        json2instanceImg(path, path.replace("polygons.json", "instanceIds.png"), "ids")
    name = "test_eval_identity_val"
    if name not in DatasetCatalog.list():
        register_cityscapes_ft_instances(name, "val", root=str(root))
    return name


def run_ours(name, outputs, out_dir, workers=2):
    ev = CityscapesInstanceSegEvaluator(name, str(out_dir), workers=workers)
    ev.reset()
    for d, o in zip(DatasetCatalog.get(name), outputs):
        ev.process([{"file_name": d["file_name"]}], [o])
    return ev.evaluate(), ev._predictions


def run_official_script(name, predictions, tmp_path):
    """cityscapesscripts' own evaluateImgLists, one process, on the predictions written as files."""
    pred_dir = tmp_path / "official_pred"
    pred_dir.mkdir()
    by_file = {p["file_name"]: p for p in predictions}
    gts, preds = [], []
    for d in DatasetCatalog.get(name):
        stem = os.path.basename(d["file_name"])[: -len("_leftImg8bit.png")]
        p = by_file[d["file_name"]]
        preds.append(write_prediction_masks(str(pred_dir), stem, p["classes"], p["scores"], p["masks"], LABEL_IDS))
        gts.append(os.path.abspath(d["instance_ids_file"]))
    args = cs_eval.args
    args.predictionPath, args.predictionWalk = str(pred_dir), None
    args.gtInstancesFile = str(tmp_path / "gtInstances.json")
    args.exportFile = str(tmp_path / "official.json")
    args.quiet, args.JSONOutput = True, True
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return cs_eval.evaluateImgLists(preds, gts, args)["averages"]
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def detectron2_dir(tmp_path_factory):
    """COCOEvaluator's output folder: it caches the dataset's COCO json there once per process and
    names that file in the dataset's metadata, so it lives as long as the dataset does."""
    return tmp_path_factory.mktemp("detectron2_coco")


def run_detectron2_coco_evaluator(name, outputs, out_dir):
    """detectron2's own COCOEvaluator (pycocotools' Python COCOeval) on the same predictions."""
    ev = COCOEvaluator(name, tasks=("bbox", "segm"), distributed=False, output_dir=str(out_dir),
                       use_fast_impl=False)
    ev.reset()
    for d, o in zip(DatasetCatalog.get(name), outputs):
        ev.process([{"file_name": d["file_name"], "image_id": d["image_id"]}], [o])
    with contextlib.redirect_stdout(io.StringIO()):
        return ev.evaluate()


def assert_same_numbers(a, b):
    assert set(a) == set(b)
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-9, nan_ok=True), key


@pytest.mark.parametrize("case", ["noisy", "empty_image_and_missing_class", "class_without_ground_truth"])
def test_numbers_identical_to_cityscapesscripts_and_detectron2(dataset, detectron2_dir, tmp_path, case):
    rng = np.random.default_rng(5)
    dicts = DatasetCatalog.get(dataset)
    present = {a["category_id"] for d in dicts for a in d["annotations"] if not a["iscrowd"]}
    absent = sorted(set(range(8)) - present)
    outputs = []
    for i, d in enumerate(dicts):
        if case == "empty_image_and_missing_class":
            outputs.append(noisy_predictions(d, rng, skip_class=2, empty=(i == 0)))  # no car predicted
        elif case == "class_without_ground_truth":
            assert absent == [5]  # train
            outputs.append(noisy_predictions(d, rng, extra_class=absent[0]))
        else:
            outputs.append(noisy_predictions(d, rng))
    ours, predictions = run_ours(dataset, outputs, tmp_path / "ours")
    official = run_official_script(dataset, predictions, tmp_path)
    assert ours["cityscapes"]["AP"] == 100 * official["allAp"]
    assert ours["cityscapes"]["AP50"] == 100 * official["allAp50%"]
    names = MetadataCatalog.get(dataset).thing_classes
    for name in names:
        a, b = ours["cityscapes"][f"AP-{name}"], 100 * official["classes"][name]["ap"]
        assert a == b or (np.isnan(a) and np.isnan(b)), name
    detectron2 = run_detectron2_coco_evaluator(dataset, outputs, detectron2_dir)
    for task in ("bbox", "segm"):
        assert_same_numbers(ours[task], detectron2[task])
    # detectron2's results file, as its COCOEvaluator writes it
    theirs = json.load(open(detectron2_dir / "coco_instances_results.json"))
    assert json.load(open(tmp_path / "ours" / "coco_instances_results.json")) == theirs
    if case == "empty_image_and_missing_class":
        assert ours["cityscapes"]["AP-car"] == 0.0
    assert 0 < ours["cityscapes"]["AP"] < 100


def test_parallel_and_single_process_agree(dataset, tmp_path):
    rng = np.random.default_rng(9)
    outputs = [noisy_predictions(d, rng) for d in DatasetCatalog.get(dataset)]
    one, _ = run_ours(dataset, outputs, tmp_path / "one", workers=1)
    two, _ = run_ours(dataset, outputs, tmp_path / "two", workers=2)
    assert json.dumps(one["cityscapes"]) == json.dumps(two["cityscapes"])  # NaN-safe, exact


@pytest.mark.slow
@pytest.mark.skipif(not detectron2_cityscapes_evaluator_works(),
                    reason="this detectron2's own Cityscapes evaluator cannot be imported (detectron2 #5436)")
def test_benchmark_compares_with_detectron2_on_the_same_predictions(tmp_path):
    """tools/benchmark_evaluation.py: detectron2's evaluators and ours give the same numbers in the
    file it writes, and its times are times: all of them together fit in the wall-clock time the
    test measured around the run, and detectron2's dataset load it reports is within a factor of 5
    of the same load timed here. (Its speedups and ratios are quotients of these times; recomputing
    them from the same file would check nothing, so it is not done.)"""
    import time

    from detectron2.data.datasets.cityscapes import load_cityscapes_instances

    start = time.perf_counter()
    proc = run(["tools/benchmark_evaluation.py", "--num-images", "4", "--width", "256", "--height", "128",
                "--detail", "3", "--instances-per-image", "8", "--mapper-images", "2",
                "--output", str(tmp_path)], datasets=str(tmp_path))
    wall = time.perf_counter() - start
    saved = json.load(open(tmp_path / "benchmark_evaluation.json"))
    ev = saved["evaluation"]
    assert ev["official_same_numbers"] is True and ev["ours_AP"] == ev["detectron2_AP"]
    # detectron2's COCOEvaluator and ours, side by side in the file: the same numbers
    for task in ("bbox", "segm"):
        assert_same_numbers(ev["ours_coco"][task], ev["detectron2_coco"][task])
    reload, loader = saved["reload"], saved["data_loader"]
    assert saved["images"] == 4 and loader["images"] == 2
    times = [reload["detectron2_s"], reload["ours_first_load_s"], reload["ours_reload_s"], ev["detectron2_s"],
             ev["ours_s"], ev["decode_s_subtracted"], loader["images"] / loader["detectron2_images_per_s"],
             loader["images"] / loader["ours_images_per_s"]]
    assert all(t > 0 for t in times) and sum(times) < wall, (times, wall)
    root = tmp_path / "data" / "cityscapes"
    timed = []
    for _ in range(2):
        t = time.perf_counter()
        load_cityscapes_instances(str(root / "leftImg8bit" / "val"), str(root / "gtFine" / "val"),
                                  from_json=True, to_polygons=True)
        timed.append(time.perf_counter() - t)
    assert min(timed) / 5 < reload["detectron2_s"] < 5 * min(timed), (reload["detectron2_s"], timed)
    assert f"{ev['speedup']:.2f}x" in proc.stdout


def adversarial_predictions(d, rng):
    """Predictions built to hit cityscapesscripts' corner cases: exact duplicates with other scores
    (one of a pair becomes a false positive), masks on crowd groups and on void, one-pixel and
    empty masks, masks across two ground-truth instances, and a whole-image mask."""
    ids = np.asarray(Image.open(d["instance_ids_file"]))
    h, w = ids.shape
    masks, classes = [], []
    for i in np.unique(ids):
        label = i // 1000 if i >= 1000 else i
        if label not in LABEL_IDS and i not in (1, 2, 3, 4):
            continue
        m = ids == i
        c = LABEL_IDS.index(label) if label in LABEL_IDS else int(rng.integers(0, 8))
        masks += [m, m.copy()]  # a duplicate
        classes += [c, c]
        if i >= 1000:
            merged = m | np.roll(m, w // 8, axis=1)  # reaches into the next object
            masks.append(merged)
            classes.append(c)
    dot = np.zeros((h, w), bool)
    dot[int(rng.integers(0, h)), int(rng.integers(0, w))] = True
    masks += [dot, np.zeros((h, w), bool), np.ones((h, w), bool)]
    classes += [int(rng.integers(0, 8)), 0, int(rng.integers(0, 8))]
    inst = Instances((h, w))
    inst.pred_masks = torch.as_tensor(np.stack(masks))
    inst.pred_boxes = Boxes(torch.tensor([[0, 0, w, h]] * len(masks), dtype=torch.float32))
    inst.scores = torch.tensor(rng.random(len(masks)), dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return {"instances": inst}


def test_in_memory_matching_equals_cityscapesscripts_on_adversarial_predictions(dataset, tmp_path):
    """Each image's match records are cityscapesscripts' own (`assignGt2Preds` on the written PNGs),
    field by field, and so are the AP numbers; an image without predictions included."""
    rng = np.random.default_rng(13)
    dicts = DatasetCatalog.get(dataset)
    outputs = [adversarial_predictions(d, rng) for d in dicts]
    outputs[1] = noisy_predictions(dicts[1], rng, empty=True)
    ours, predictions = run_ours(dataset, outputs, tmp_path / "ours")
    official = run_official_script(dataset, predictions, tmp_path)
    assert ours["cityscapes"]["AP"] == 100 * official["allAp"]
    assert ours["cityscapes"]["AP50"] == 100 * official["allAp50%"]
    for name in MetadataCatalog.get(dataset).thing_classes:
        a, b = ours["cityscapes"][f"AP50-{name}"], 100 * official["classes"][name]["ap50%"]
        assert a == b or (np.isnan(a) and np.isnan(b)), name

    pred_dir = tmp_path / "official_pred"  # the files run_official_script wrote
    args = cs_eval.args
    for d, p in zip(dicts, predictions):
        gt_file = os.path.abspath(d["instance_ids_file"])
        stem = os.path.basename(d["file_name"])[: -len("_leftImg8bit.png")]
        with Image.open(gt_file) as gt_image:
            gt, pred = cs_eval.assignGt2Preds(
                cs_eval.filterGtInstances(instances2dict([gt_file])[gt_file], args), gt_image,
                cs_eval.readPredInfo(str(pred_dir / f"{stem}_pred.txt"), args), args)
        masks = np.zeros((len(p["masks"]), d["height"], d["width"]), bool)
        for k, rle in enumerate(p["masks"]):
            masks[k] = mask_util.decode(rle)
        mine = match_image_in_memory(gt_file, masks.shape[1:], p["classes"], p["scores"], encode_masks(masks)[1],
                                     LABEL_IDS)
        assert without_image_names(mine["groundTruth"]) == without_image_names(gt)
        assert without_image_names(mine["prediction"]) == without_image_names(pred)


def without_image_names(records):
    """The match records with the mask file names (PNG paths there, none here) left out."""
    if isinstance(records, dict):
        return {k: without_image_names(v) for k, v in records.items() if k != "imgName"}
    if isinstance(records, list):
        return [without_image_names(v) for v in records]
    return records
