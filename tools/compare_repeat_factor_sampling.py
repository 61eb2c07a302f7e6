#!/usr/bin/env python
"""What repeat-factor sampling does for rare classes: two trainings of the same config, seed and
length on a synthetic Cityscapes-format set whose training split has rare classes (the val split
has every class), one with detectron2's TrainingSampler and one with RepeatFactorTrainingSampler;
prints rare-class and overall AP of both and writes <output>/compare_repeat_factor_sampling.json.

    python tools/compare_repeat_factor_sampling.py [--iterations 300] [--threshold 0.3]
"""
import argparse
import glob
import json
import os
import subprocess
import sys

from cityscapes_ft.data.synthetic import make_synthetic_cityscapes, synthetic_dataset_matches
from cityscapes_ft.utils import atomic_write_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLERS = ("TrainingSampler", "RepeatFactorTrainingSampler")


def argument_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", default=os.path.join(REPO, "configs", "quick_schedules", "cs_ft_cpu_demo.yaml"))
    p.add_argument("--output", default=os.path.join(REPO, "output", "compare_repeat_factor_sampling"))
    p.add_argument("--rare-classes", default="train,bus,truck", help="comma-separated, rare in training")
    p.add_argument("--rare-rate", type=float, default=0.05, help="share of training images with each rare class")
    p.add_argument("--threshold", type=float, default=0.3, help="DATALOADER.REPEAT_THRESHOLD")
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--num-train", type=int, default=96)
    p.add_argument("--num-val", type=int, default=24)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for both runs")
    return p


def train(args, sampler, data_root):
    out = os.path.join(args.output, sampler)
    steps = f"({int(args.iterations * 0.8)},)"
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", args.config_file,
           "OUTPUT_DIR", out, "SEED", str(args.seed), "SOLVER.MAX_ITER", str(args.iterations), "SOLVER.STEPS", steps,
           "DATALOADER.SAMPLER_TRAIN", sampler, "DATALOADER.REPEAT_THRESHOLD", str(args.threshold),
           "TEST.EVAL_PERIOD", "0", "CITYSCAPES_FT.VIS_NUM_IMAGES", "0", *args.opts]
    print(f"[compare] training with {sampler} -> {out}", flush=True)
    subprocess.run(cmd, check=True, env=dict(os.environ, DETECTRON2_DATASETS=data_root))
    (path,) = sorted(glob.glob(os.path.join(out, "eval_results", "*.json")))[-1:]
    with open(path) as f:
        return json.load(f)["results"]


def main(argv=None):
    args = argument_parser().parse_args(argv)
    rare = [c.strip() for c in args.rare_classes.split(",") if c.strip()]
    data_root = os.path.join(args.output, "data")
    root = os.path.join(data_root, "cityscapes")
    spec = dict(num_train=args.num_train, num_val=args.num_val, width=args.width, height=args.height,
                seed=args.seed, rare_train_classes=rare, rare_rate=args.rare_rate)
    if not synthetic_dataset_matches(root, **spec):
        make_synthetic_cityscapes(root, args.num_train, args.num_val, args.width, args.height, args.seed,
                                  rare_train_classes=rare, rare_rate=args.rare_rate)
    runs = {sampler: train(args, sampler, data_root) for sampler in SAMPLERS}

    def summary(res):
        official, segm = res["cityscapes"], res["segm"]
        return {"official_AP": official["AP"], "official_AP_rare": sum(official[f"AP-{c}"] for c in rare) / len(rare),
                "coco_mask_AP": segm["AP"], "coco_mask_AP_rare": sum(segm[f"AP-{c}"] for c in rare) / len(rare),
                "official_AP_per_rare_class": {c: official[f"AP-{c}"] for c in rare}}

    result = {"rare_classes": rare, "rare_rate": args.rare_rate, "threshold": args.threshold,
              "iterations": args.iterations, "seed": args.seed, "data": spec, "config": args.config_file,
              "runs": {sampler: summary(res) for sampler, res in runs.items()}}
    plain, repeated = (result["runs"][s] for s in SAMPLERS)
    result["difference"] = {k: repeated[k] - plain[k] for k in plain if not isinstance(plain[k], dict)}
    print(f"\n{'':28s}{'official AP':>12s}{'rare':>8s}{'COCO mask AP':>14s}{'rare':>8s}")
    for sampler in SAMPLERS:
        r = result["runs"][sampler]
        print(f"{sampler:28s}{r['official_AP']:12.1f}{r['official_AP_rare']:8.1f}{r['coco_mask_AP']:14.1f}"
              f"{r['coco_mask_AP_rare']:8.1f}")
    path = os.path.join(args.output, "compare_repeat_factor_sampling.json")
    atomic_write_json(path, result)
    print(f"Wrote {path}")
    return result


if __name__ == "__main__":
    main()
