"""The README's main job: synthetic Cityscapes-format data -> CPU fine-tuning -> evaluation ->
pictures, in one command (tools/run_synthetic_demo.py)."""
import argparse
import glob
import json
import os
import time

from .config import load_cityscapes_ft_cfg
from .data.synthetic import make_synthetic_cityscapes, synthetic_dataset_matches

DEMO_CONFIG = "configs/quick_schedules/cs_ft_cpu_demo.yaml"


def argument_parser():
    parser = argparse.ArgumentParser(
        description="Make synthetic Cityscapes-format data if absent, fine-tune a CPU-sized Mask "
        "R-CNN on it, evaluate (official Cityscapes AP + COCO box/mask AP) and draw predictions."
    )
    parser.add_argument("--config-file", default=DEMO_CONFIG)
    parser.add_argument("--data-root", default="datasets/synthetic",
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
    from .engine import argument_parser as train_parser
    from .engine import launch, train_or_evaluate

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
    return summarize(train_args, time.perf_counter() - start)


def summarize(train_args, seconds):
    out = load_cityscapes_ft_cfg(train_args.config_file, train_args.opts).OUTPUT_DIR
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
    return final


def main(argv=None):
    from .errors import user_errors_as_messages

    with user_errors_as_messages():
        run_synthetic_demo(argument_parser().parse_args(argv))
