#!/usr/bin/env python
"""The main job on its embedded default: synthetic Cityscapes-format data, CPU fine-tuning for a
few minutes, official + COCO evaluation, prediction pictures. Outputs in output/cs_ft_cpu_demo/,
with demo_results.json: the numbers, the wall time and what produced them (the README quotes
the committed copy, docs/results/make_demo.json).

    python tools/run_synthetic_demo.py [--num-gpus 2] [KEY VALUE ...]
"""
import argparse
import datetime
import glob
import json
import os
import platform
import time

from cityscapes_ft.config import load_cityscapes_ft_cfg
from cityscapes_ft.data.synthetic import make_synthetic_cityscapes, synthetic_dataset_matches
from cityscapes_ft.utils import atomic_write_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(REPO, "configs", "quick_schedules", "cs_ft_cpu_demo.yaml")


def argument_parser():
    parser = argparse.ArgumentParser(
        description="Make synthetic Cityscapes-format data if absent, fine-tune a CPU-sized Mask "
        "R-CNN on it, evaluate (official Cityscapes AP + COCO box/mask AP) and draw predictions."
    )
    parser.add_argument("--config-file", default=DEMO_CONFIG)
    parser.add_argument("--data-root", default=os.path.join(REPO, "datasets", "synthetic"),
                        help="DETECTRON2_DATASETS for the run; the data goes to <data-root>/cityscapes")
    parser.add_argument("--num-train", type=int, default=96)
    parser.add_argument("--num-val", type=int, default=24)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-gpus", type=int, default=1, help="processes (CPU: gloo)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="trailing KEY VALUE config overrides")
    return parser


def run_synthetic_demo(args):
    from cityscapes_ft.engine import argument_parser as train_parser
    from cityscapes_ft.engine import launch, train_or_evaluate

    start = time.perf_counter()
    root = os.path.join(args.data_root, "cityscapes")
    spec = dict(num_train=args.num_train, num_val=args.num_val, width=args.width,
                height=args.height, seed=args.seed)
    if synthetic_dataset_matches(root, **spec):
        print(f"[demo] using the synthetic dataset in {root}")
    else:
        print(f"[demo] making synthetic Cityscapes-format data in {root}")
        make_synthetic_cityscapes(root, **spec)
    os.environ["DETECTRON2_DATASETS"] = os.path.abspath(args.data_root)

    train_args = train_parser().parse_args(
        ["--config-file", args.config_file, "--num-gpus", str(args.num_gpus), "--dist-url", "auto"]
        + (["--resume"] if args.resume else [])
        + list(args.opts)
    )
    launch(train_or_evaluate, args.num_gpus, dist_url="auto", args=(train_args,))
    return summarize(train_args, time.perf_counter() - start, spec)


def summarize(train_args, seconds, data_spec):
    cfg = load_cityscapes_ft_cfg(train_args.config_file, train_args.opts)
    out = cfg.OUTPUT_DIR
    results = sorted(glob.glob(os.path.join(out, "eval_results", "*.json")), key=os.path.getmtime)
    if not results:
        raise RuntimeError(f"The run left no evaluation results in {out}/eval_results")
    with open(results[-1]) as f:
        final = json.load(f)
    res = final["results"]
    pictures = sorted(glob.glob(os.path.join(out, "predictions", "*.png")))
    print(
        f"\n[demo] done in {seconds / 60:.1f} min. On {final['dataset']} after "
        f"{final['iteration']} iterations:\n"
        f"  official Cityscapes mask AP {res['cityscapes']['AP']:.1f} (AP50 {res['cityscapes']['AP50']:.1f})\n"
        f"  COCO-style box AP {res['bbox']['AP']:.1f}, mask AP {res['segm']['AP']:.1f}\n"
        f"  metrics: {results[-1]}\n  pictures: {len(pictures)} in {os.path.join(out, 'predictions')}\n"
        f"  report (open in a browser): {os.path.join(out, 'report.html')}\n"
        f"  training log and curves: {os.path.join(out, 'log.txt')}, {os.path.join(out, 'training_curves.png')}"
    )
    summary = {
        "command": "make demo (tools/run_synthetic_demo.py)", "date": datetime.date.today().isoformat(),
        "config": os.path.relpath(train_args.config_file, REPO), "overrides": list(train_args.opts),
        "seed": cfg.SEED, "data": data_spec, "iterations": final["iteration"], "wall_time_s": round(seconds, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "official": {k: res["cityscapes"][k] for k in ("AP", "AP50")},
        "coco_box_AP": res["bbox"]["AP"], "coco_mask_AP": res["segm"]["AP"],
        "eval_results": os.path.relpath(results[-1], out), "results": res,
    }
    atomic_write_json(os.path.join(out, "demo_results.json"), summary)
    print(f"  summary: {os.path.join(out, 'demo_results.json')}")
    return final


def main(argv=None):
    from cityscapes_ft.errors import user_errors_as_messages

    with user_errors_as_messages():
        run_synthetic_demo(argument_parser().parse_args(argv))


if __name__ == "__main__":
    main()
