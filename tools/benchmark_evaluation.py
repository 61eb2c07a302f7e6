#!/usr/bin/env python
"""The whole evaluation (official Cityscapes AP + COCO box and mask AP), the dataset reload and
the training-time data mapping of cityscapes-ft against plain detectron2, measured in one run on
the same synthetic Cityscapes-format val set and the same predictions; prints the ratios and
writes them to <output>/benchmark_evaluation.json.

    python tools/benchmark_evaluation.py [--num-images 500 --width 2048 --height 1024]
"""
import argparse
import atexit
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
from detectron2.evaluation import CityscapesInstanceEvaluator, COCOEvaluator
from detectron2.structures import Boxes, Instances
from PIL import Image

from cityscapes_ft.data import CITYSCAPES_THING_CLASSES, CITYSCAPES_THING_LABEL_IDS, load_cityscapes_ft_instances
from cityscapes_ft.data import register_cityscapes_ft_instances
from cityscapes_ft.data.synthetic import make_synthetic_cityscapes, synthetic_dataset_matches
from cityscapes_ft.evaluation import CityscapesInstanceSegEvaluator
from cityscapes_ft.utils import atomic_write_json
from cityscapesscripts_on_numpy2 import mend_cityscapesscripts_for_numpy2


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
    if mend_cityscapesscripts_for_numpy2():
        print("[benchmark] numpy 2: cityscapesscripts, which detectron2's evaluator calls, mended "
              "(tools/cityscapesscripts_on_numpy2.py)", flush=True)
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
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # also when a pass fails
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
    # detectron2's whole evaluation of official and COCO-style AP: CityscapesInstanceEvaluator and
    # COCOEvaluator (use_fast_impl=False, its pycocotools path: the fast one needs the compiled
    # extension), fed in the same pass. (Not through DatasetEvaluators: both name a result "segm".)
    d2_official = CityscapesInstanceEvaluator(d2_name)
    d2_coco = COCOEvaluator(ours_name, tasks=("bbox", "segm"), distributed=False,
                            output_dir=os.path.join(work, "d2"), use_fast_impl=False)
    d2_both = _Both(d2_official, d2_coco)
    cwd = os.getcwd()
    os.chdir(work)  # detectron2's evaluation writes matches.json into the working directory
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            (d2_off_res, d2_coco_res), t_d2 = timed_pass(d2_both, d2_both.evaluate)
    finally:
        os.chdir(cwd)
    ours = CityscapesInstanceSegEvaluator(ours_name, os.path.join(work, "ours"), workers=args.workers)
    ours_res, t_ours = timed_pass(ours, ours.evaluate)
    t_d2, t_ours = t_d2 - t_decode, t_ours - t_decode
    shutil.rmtree(work, ignore_errors=True)
    official_same = (d2_off_res["segm"]["AP"] == ours_res["cityscapes"]["AP"]
                     and d2_off_res["segm"]["AP50"] == ours_res["cityscapes"]["AP50"])
    coco_max_difference = max(
        0.0 if np.isnan(d2_coco_res[t][m]) and np.isnan(ours_res[t][m]) else abs(d2_coco_res[t][m] - ours_res[t][m])
        for t in ("bbox", "segm") for m in d2_coco_res[t])
    result["evaluation"] = {
        "detectron2_s": t_d2, "ours_s": t_ours, "speedup": t_d2 / t_ours,
        "what": "official AP + COCO box and mask AP: detectron2 CityscapesInstanceEvaluator + "
                "COCOEvaluator(use_fast_impl=False) vs CityscapesInstanceSegEvaluator, process() of every "
                "image and evaluate()",
        "instances_per_image": args.instances_per_image, "decode_s_subtracted": t_decode,
        "workers": args.workers or os.cpu_count(),
        "detectron2_AP": d2_off_res["segm"]["AP"], "ours_AP": ours_res["cityscapes"]["AP"],
        "detectron2_AP50": d2_off_res["segm"]["AP50"], "ours_AP50": ours_res["cityscapes"]["AP50"],
        "official_same_numbers": official_same,
        "detectron2_coco": {t: d2_coco_res[t] for t in ("bbox", "segm")},
        "ours_coco": {t: {m: ours_res[t][m] for m in d2_coco_res[t]} for t in ("bbox", "segm")},
        "coco_max_abs_difference": coco_max_difference,
    }
    print(f"[evaluation] detectron2 {t_d2:.1f}s, ours {t_ours:.1f}s -> {t_d2 / t_ours:.2f}x; official AP "
          f"{d2_off_res['segm']['AP']:.3f} vs {ours_res['cityscapes']['AP']:.3f} (same: {official_same}); "
          f"COCO mask AP {d2_coco_res['segm']['AP']:.3f} vs {ours_res['segm']['AP']:.3f}, box AP "
          f"{d2_coco_res['bbox']['AP']:.3f} vs {ours_res['bbox']['AP']:.3f} (largest difference of any "
          f"COCO number {coco_max_difference:.2g})")
    result["data_loader"] = measure_mappers(ours_name, args.mapper_images, args.config_file)
    path = os.path.join(args.output, "benchmark_evaluation.json")
    atomic_write_json(path, result)
    print(f"Wrote {path}")
    return result


def measure_mappers(dataset_name, num_images, config_file):
    """Training-time mapping of full-resolution images (read, resize, flip, polygons to masks and
    boxes) in one process: our mapper against detectron2's DatasetMapper with polygon masks, on the
    same dataset dicts and config. Images per second per loader worker."""
    from detectron2.data import DatasetMapper

    from cityscapes_ft.config import load_cityscapes_ft_cfg
    from cityscapes_ft.data.mapper import build_mapper

    cfg = load_cityscapes_ft_cfg(config_file, ["MODEL.DEVICE", "cpu"])
    dicts = DatasetCatalog.get(dataset_name)[:num_images]
    out = {"images": len(dicts), "config": config_file, "min_size_train": list(cfg.INPUT.MIN_SIZE_TRAIN),
           "max_size_train": cfg.INPUT.MAX_SIZE_TRAIN}
    for name, mapper in (("detectron2", DatasetMapper(cfg, is_train=True)), ("ours", build_mapper(cfg, True))):
        mapper(dicts[0])  # warm-up
        torch.manual_seed(0)
        np.random.seed(0)
        start = time.perf_counter()
        for d in dicts:
            mapper(d)
        out[f"{name}_images_per_s"] = len(dicts) / (time.perf_counter() - start)
    out["ratio"] = out["ours_images_per_s"] / out["detectron2_images_per_s"]
    print(f"[data loader] per worker, {len(dicts)} images at full resolution: detectron2 DatasetMapper "
          f"{out['detectron2_images_per_s']:.2f} images/s, ours {out['ours_images_per_s']:.2f} images/s "
          f"({out['ratio']:.2f}x)")
    return out


class _Both:
    """Two evaluators fed in one pass; evaluate() returns both results."""

    def __init__(self, *evaluators):
        self.evaluators = evaluators

    def reset(self):
        for e in self.evaluators:
            e.reset()

    def process(self, inputs, outputs):
        for e in self.evaluators:
            e.process(inputs, outputs)

    def evaluate(self):
        return tuple(e.evaluate() for e in self.evaluators)


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
    p.add_argument("--mapper-images", type=int, default=20, help="images for the data loader measurement")
    p.add_argument("--config-file", default="configs/cs_ft.yaml", help="config of the data loader measurement")
    p.add_argument("--output", default="output/benchmark_evaluation")
    return p


def main(argv=None):
    run(argument_parser().parse_args(argv))


if __name__ == "__main__":
    main()
