#!/usr/bin/env python
"""Corrupting one image with each `imagecorruptions` corruption (one thread, each in a child
process stopped after --timeout seconds) against running the model on it, at the config's test
size and at the image's own size; prints the times and the ratios (= the loader workers each
corruption needs for tools/test_robustness.py to be bounded by inference) and writes them as JSON.

    python tools/benchmark_corruptions.py --config-file configs/quick_schedules/cs_ft_cpu_demo.yaml \
        [--severity 3] [--timeout 60] [--width 2048 --height 1024] [--image PNG] \
        MODEL.WEIGHTS output/cs_ft_cpu_demo/model_final.pth
"""
import argparse
import datetime
import os
import platform
import shutil
import tempfile

import cv2
import torch

from cityscapes_ft.config import load_cityscapes_ft_cfg
from cityscapes_ft.data.corruptions import CORRUPTIONS
from cityscapes_ft.data.synthetic import make_synthetic_cityscapes
from cityscapes_ft.engine.corruption_timing import benchmark_corruptions, format_corruption_timing
from cityscapes_ft.errors import user_errors_as_messages
from cityscapes_ft.utils import atomic_write_json


def read_image(args):
    """The --image, or a synthetic Cityscapes-format frame of --width x --height (BGR)."""
    if args.image:
        image = cv2.imread(args.image)
        if image is None:
            raise FileNotFoundError(f"--image: cannot read {args.image}")
        return image, args.image
    folder = tempfile.mkdtemp(prefix="benchmark_corruptions_")
    try:
        root = os.path.join(folder, "cityscapes")
        make_synthetic_cityscapes(root, num_train=0, num_val=1, width=args.width, height=args.height, seed=0,
                                  log=lambda *_: None)
        (path,) = [os.path.join(d, f) for d, _, files in os.walk(os.path.join(root, "leftImg8bit")) for f in files]
        return cv2.imread(path), f"synthetic {args.width}x{args.height} (make_synthetic_cityscapes, seed 0)"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(args):
    image, described = read_image(args)
    load = os.getloadavg()  # other work on the machine slows both timings
    cfg = load_cityscapes_ft_cfg(args.config_file, args.opts)
    inference = benchmark_corruptions(cfg, image, args.corruptions, args.severity, args.timeout, args.repeats)
    print("\n" + format_corruption_timing(inference))
    atomic_write_json(args.output, {
        "command": "tools/benchmark_corruptions.py", "date": datetime.date.today().isoformat(),
        "config": os.path.relpath(args.config_file), "overrides": list(args.opts), "image": described,
        "severity": args.severity, "timeout_s": args.timeout, "corruption_threads": 1,
        "inference_threads": torch.get_num_threads(), "inference_repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average_at_start": load},
        "inference": inference})
    print(f"\nWritten {args.output}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--corruptions", default=",".join(CORRUPTIONS), help="comma-separated (default: all 15)")
    parser.add_argument("--severity", type=int, default=3, choices=range(1, 6))
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a corruption is stopped")
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--image", help="an image to corrupt instead of a synthetic one")
    parser.add_argument("--repeats", type=int, default=3, help="timed inference runs (median), after a warm-up")
    parser.add_argument("--output", default=os.path.join("output", "benchmark_corruptions.json"))
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="trailing KEY VALUE config overrides")
    args = parser.parse_args()
    args.corruptions = [c for c in args.corruptions.split(",") if c]
    unknown = sorted(set(args.corruptions) - set(CORRUPTIONS))
    if unknown:
        parser.error(f"unknown corruptions {unknown}; of: {', '.join(CORRUPTIONS)}")
    with user_errors_as_messages():
        main(args)
