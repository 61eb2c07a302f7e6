"""Our evaluator's numbers are the official scripts' numbers on the same predictions, to the digit,
including the edge cases cityscapesscripts is known for."""
import contextlib
import glob
import io
import json
import os

import numpy as np
import pytest
import torch
from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as cs_eval
from cityscapesscripts.preparation.json2instanceImg import json2instanceImg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cityscapes_ft.data import register_cityscapes_ft_instances
from cityscapes_ft.data.synthetic import make_synthetic_cityscapes
from cityscapes_ft.evaluation import CityscapesInstanceSegEvaluator
from cityscapes_ft.evaluation.official_parallel import write_cityscapes_prediction

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
    # No "train" anywhere in this split: a class that has no ground truth.
    for path in glob.glob(str(root / "gtFine" / "val" / "*" / "*_polygons.json")):
        data = json.load(open(path))
        data["objects"] = [o for o in data["objects"] if o["label"] != "train"]
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
    """cityscapesscripts' own evaluateImgLists, one process, on files written the same way."""
    pred_dir = tmp_path / "official_pred"
    pred_dir.mkdir()
    by_file = {p["file_name"]: p for p in predictions}
    gts, preds = [], []
    for d in DatasetCatalog.get(name):
        stem = os.path.basename(d["file_name"])[: -len("_leftImg8bit.png")]
        preds.append(write_cityscapes_prediction(str(pred_dir), stem, by_file[d["file_name"]], LABEL_IDS))
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


def run_pycocotools(name, predictions, out_dir, task):
    """COCOeval on a ground-truth JSON file and a results JSON file, the usual way."""
    ev = CityscapesInstanceSegEvaluator(name, str(out_dir))
    gt_path, dt_path = str(out_dir / "gt.json"), str(out_dir / f"dt_{task}.json")
    json.dump(ev._coco_ground_truth(DatasetCatalog.get(name)).dataset, open(gt_path, "w"))
    dets = []
    for img_id, d in enumerate(DatasetCatalog.get(name), start=1):
        p = next(p for p in predictions if p["file_name"] == d["file_name"])
        for k, (b, s, c) in enumerate(zip(p["boxes"], p["scores"], p["classes"])):
            det = {"image_id": img_id, "category_id": c, "score": s, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
            if task == "segm":
                det["segmentation"] = p["masks"][k]
            dets.append(det)
    json.dump(dets, open(dt_path, "w"))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
        e = COCOeval(gt, gt.loadRes(dt_path), task)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return [100 * float(x) for x in e.stats[:6]]


@pytest.mark.parametrize("case", ["noisy", "empty_image_and_missing_class", "class_without_ground_truth"])
def test_numbers_identical_to_cityscapesscripts_and_pycocotools(dataset, tmp_path, case):
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
    for task in ("bbox", "segm"):
        expected = run_pycocotools(dataset, predictions, tmp_path, task)
        assert [ours[task][m] for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")] == expected
    if case == "empty_image_and_missing_class":
        assert ours["cityscapes"]["AP-car"] == 0.0
    assert 0 < ours["cityscapes"]["AP"] < 100


def test_parallel_and_single_process_agree(dataset, tmp_path):
    rng = np.random.default_rng(9)
    outputs = [noisy_predictions(d, rng) for d in DatasetCatalog.get(dataset)]
    one, _ = run_ours(dataset, outputs, tmp_path / "one", workers=1)
    two, _ = run_ours(dataset, outputs, tmp_path / "two", workers=2)
    assert json.dumps(one["cityscapes"]) == json.dumps(two["cityscapes"])  # NaN-safe, exact


def _detectron2_cityscapes_evaluator_works():
    """Upstream main's Cityscapes loader and evaluator import a Meta-internal module inside their
    functions since 4823082a (detectron2 #5436); v0.6's import cityscapesscripts."""
    import inspect

    import detectron2.data.datasets.cityscapes as loader
    from detectron2.evaluation import cityscapes_evaluation as evaluator

    return not any("deeplearning.projects" in inspect.getsource(m) for m in (loader, evaluator))


@pytest.mark.slow
@pytest.mark.skipif(not _detectron2_cityscapes_evaluator_works(),
                    reason="this detectron2's own Cityscapes evaluator cannot be imported (detectron2 #5436)")
def test_benchmark_compares_with_detectron2_on_the_same_predictions(tmp_path):
    from cityscapes_ft.benchmarks.evaluation_speed import argument_parser, run

    result = run(argument_parser().parse_args(
        ["--num-images", "4", "--width", "256", "--height", "128", "--detail", "3",
         "--instances-per-image", "8", "--output", str(tmp_path)]))
    saved = json.load(open(tmp_path / "benchmark_evaluation.json"))
    assert saved["evaluation"]["same_numbers"] is True
    assert saved["evaluation"]["ours_AP"] == saved["evaluation"]["detectron2_AP"]
    assert saved["reload"]["reload_speedup"] == pytest.approx(
        saved["reload"]["detectron2_s"] / saved["reload"]["ours_reload_s"])
    assert result["images"] == 4
