"""Dataset reload and evaluation time: cityscapes-ft against plain detectron2, in one run, on the
same synthetic Cityscapes-format data and the same predictions."""
import argparse
import contextlib
import io
import json
import os
import shutil
import tempfile
import time

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.cityscapes import load_cityscapes_instances
from detectron2.evaluation import CityscapesInstanceEvaluator
from detectron2.structures import Boxes, Instances
from PIL import Image

from ..data import CITYSCAPES_THING_CLASSES, CITYSCAPES_THING_LABEL_IDS, load_cityscapes_ft_instances
from ..data import register_cityscapes_ft_instances
from ..data.synthetic import make_synthetic_cityscapes, synthetic_dataset_matches
from ..evaluation import CityscapesInstanceSegEvaluator
from ..utils import atomic_write_json


def fake_predictions(instance_ids_file, count, rng):
    """`count` instances per image: ground-truth instances shifted by a few pixels, then false
    positives, with random scores (full-resolution masks, as a model outputs them)."""
    ids = np.asarray(Image.open(instance_ids_file))
    h, w = ids.shape
    masks, classes = [], []
    for i in np.unique(ids):
        if len(masks) >= count:
            break
        if i >= 1000 and i // 1000 in CITYSCAPES_THING_LABEL_IDS:
            masks.append(np.roll(ids == i, (rng.integers(-4, 5), rng.integers(-4, 5)), axis=(0, 1)))
            classes.append(CITYSCAPES_THING_LABEL_IDS.index(i // 1000))
    while len(masks) < count:
        m = np.zeros((h, w), bool)
        bh, bw = int(rng.integers(h // 20, h // 5)), int(rng.integers(w // 40, w // 8))
        y, x = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
        m[y : y + bh, x : x + bw] = True
        masks.append(m)
        classes.append(int(rng.integers(0, 8)))
    inst = Instances((h, w))
    inst.pred_masks = torch.from_numpy(np.stack(masks))
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0, 0, 1, 1])
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.scores = torch.tensor(rng.random(count), dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes)
    return {"instances": inst}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run(args):
    root = os.path.join(args.output, "data", "cityscapes")
    spec = dict(num_train=0, num_val=args.num_images, width=args.width, height=args.height, seed=args.seed,
                detail=args.detail)
    if not synthetic_dataset_matches(root, **spec):
        shutil.rmtree(root, ignore_errors=True)
        make_synthetic_cityscapes(root, 0, args.num_images, args.width, args.height, args.seed, detail=args.detail)
    image_dir = os.path.abspath(os.path.join(root, "leftImg8bit", "val"))
    gt_dir = os.path.abspath(os.path.join(root, "gtFine", "val"))
    vertices = sum(len(o["polygon"]) for p in _jsons(gt_dir) for o in json.load(open(p))["objects"])
    result = {"images": args.num_images, "size": [args.width, args.height],
              "polygon_vertices_per_file": vertices / args.num_images, "cpus": os.cpu_count()}

    # 1. dataset reload
    d2_times = []
    for _ in range(2):
        _, t = timed(lambda: load_cityscapes_instances(image_dir, gt_dir, from_json=True, to_polygons=True))
        d2_times.append(t)
    user_cache = os.environ.get("CITYSCAPES_FT_CACHE_DIR")
    os.environ["CITYSCAPES_FT_CACHE_DIR"] = cache_dir = tempfile.mkdtemp(prefix="cityscapes_ft_cache_")
    try:  # a cache of its own, empty at the start
        _, cold = timed(lambda: load_cityscapes_ft_instances(root, "val"))
        warm = min(timed(lambda: load_cityscapes_ft_instances(root, "val"))[1] for _ in range(3))
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
        if user_cache is None:
            del os.environ["CITYSCAPES_FT_CACHE_DIR"]
        else:
            os.environ["CITYSCAPES_FT_CACHE_DIR"] = user_cache
    result["reload"] = {"detectron2_s": min(d2_times), "ours_first_load_s": cold, "ours_reload_s": warm,
                        "reload_speedup": min(d2_times) / warm, "first_load_speedup": min(d2_times) / cold}
    print(f"[reload] detectron2 {min(d2_times):.2f}s, ours first {cold:.2f}s, reload {warm:.3f}s "
          f"-> {result['reload']['reload_speedup']:.1f}x")

    # 2. evaluation on the same predictions
    ours_name, d2_name = "benchmark_cityscapes_ft_val", "benchmark_detectron2_cityscapes_val"
    if ours_name not in DatasetCatalog.list():
        register_cityscapes_ft_instances(ours_name, "val", root=root)
    MetadataCatalog.get(d2_name).set(thing_classes=list(CITYSCAPES_THING_CLASSES), gt_dir=gt_dir)
    work = tempfile.mkdtemp(prefix="cityscapes_ft_bench_")
    # The predictions, made once and kept as RLE; every pass below decodes them the same way, so
    # each evaluator is timed on the wall clock, its background workers included, minus that decode.
    rng = np.random.default_rng(args.seed)
    dicts = DatasetCatalog.get(ours_name)
    stored = []
    for k, d in enumerate(dicts):
        inst = fake_predictions(d["instance_ids_file"], args.instances_per_image, rng)["instances"]
        rles = [mask_util.encode(np.asfortranarray(m.view(np.uint8))) for m in inst.pred_masks.numpy()]
        stored.append((inst.pred_boxes.tensor, inst.scores, inst.pred_classes, rles, inst.image_size))
        if (k + 1) % max(1, len(dicts) // 10) == 0:
            print(f"[evaluation] made predictions for {k + 1}/{len(dicts)} images")

    def stream():
        for d, (boxes, scores, classes, rles, size) in zip(dicts, stored):
            inst = Instances(size)
            inst.pred_boxes, inst.scores, inst.pred_classes = Boxes(boxes), scores, classes
            # C-contiguous (N, H, W) bool, as a model outputs them
            inst.pred_masks = torch.from_numpy(np.ascontiguousarray(mask_util.decode(rles).transpose(2, 0, 1), dtype=bool))
            yield [{"file_name": d["file_name"], "image_id": d["image_id"]}], [{"instances": inst}]

    def timed_pass(evaluator=None, evaluate=None):
        start = time.perf_counter()
        if evaluator is not None:
            evaluator.reset()
        for inputs, outputs in stream():
            if evaluator is not None:
                evaluator.process(inputs, outputs)
        res = evaluate() if evaluate else None
        return res, time.perf_counter() - start

    _, t_decode = timed_pass()
    d2 = CityscapesInstanceEvaluator(d2_name)
    cwd = os.getcwd()
    os.chdir(work)  # detectron2's evaluation writes matches.json into the working directory
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            d2_res, t_d2 = timed_pass(d2, d2.evaluate)
    finally:
        os.chdir(cwd)
    ours = CityscapesInstanceSegEvaluator(ours_name, os.path.join(work, "ours"), tasks=("cityscapes",),
                                          workers=args.workers)
    ours_res, t_ours = timed_pass(ours, ours.evaluate)
    t_d2, t_ours = t_d2 - t_decode, t_ours - t_decode
    shutil.rmtree(work, ignore_errors=True)
    same = (abs(d2_res["segm"]["AP"] - ours_res["cityscapes"]["AP"]) < 1e-9
            and abs(d2_res["segm"]["AP50"] - ours_res["cityscapes"]["AP50"]) < 1e-9)
    result["evaluation"] = {
        "detectron2_s": t_d2, "ours_s": t_ours, "speedup": t_d2 / t_ours,
        "instances_per_image": args.instances_per_image, "decode_s_subtracted": t_decode, "workers": args.workers or os.cpu_count(),
        "detectron2_AP": d2_res["segm"]["AP"], "ours_AP": ours_res["cityscapes"]["AP"],
        "detectron2_AP50": d2_res["segm"]["AP50"], "ours_AP50": ours_res["cityscapes"]["AP50"],
        "same_numbers": same,
    }
    print(f"[evaluation] detectron2 {t_d2:.1f}s, ours {t_ours:.1f}s -> {t_d2 / t_ours:.2f}x; "
          f"AP {d2_res['segm']['AP']:.3f} vs {ours_res['cityscapes']['AP']:.3f} (same: {same})")
    path = os.path.join(args.output, "benchmark_evaluation.json")
    atomic_write_json(path, result)
    print(f"Wrote {path}")
    return result


def _jsons(gt_dir):
    for city in sorted(os.listdir(gt_dir)):
        for name in sorted(os.listdir(os.path.join(gt_dir, city))):
            if name.endswith("_polygons.json"):
                yield os.path.join(gt_dir, city, name)


def argument_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-images", type=int, default=500, help="val images (real Cityscapes val: 500)")
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--detail", type=int, default=40, help="extra points per polygon edge")
    p.add_argument("--instances-per-image", type=int, default=30)
    p.add_argument("--workers", type=int, default=None, help="processes for our evaluation (default: cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="output/benchmark_evaluation")
    return p


def main(argv=None):
    run(argument_parser().parse_args(argv))
