#!/usr/bin/env python
"""Parameters, FLOPs and activations of a config's model, as detectron2's analyze_model.py counts
them (fvcore), on Cityscapes-sized inputs.

    python tools/analyze_model.py --config-file configs/cs_ft.yaml --tasks parameter flop activation \
        [--num-inputs 1] [--dataset NAME] [--output analysis.json] [MODEL.WEIGHTS W]

FLOPs and activations are counted on the config's first test dataset (its images resized as the
test loader resizes them); where that dataset cannot be read, on random 2048x1024 images.
"""
import json

from detectron2.utils.logger import setup_logger

from cityscapes_ft.engine import argument_parser
from cityscapes_ft.engine.analysis import TASKS, analyze_model
from cityscapes_ft.errors import user_errors_as_messages
from cityscapes_ft.lazy import load_config_file
from cityscapes_ft.utils import atomic_write_json, json_text


def main(args):
    setup_logger(name="cityscapes_ft")
    setup_logger(name="fvcore")
    cfg = load_config_file(args.config_file, args.opts)
    cfg.freeze()
    report = analyze_model(cfg, args.tasks, args.num_inputs, args.dataset)
    summary = {k: report[k] for k in report if k not in ("flops", "activations", "parameters")}
    if "parameters" in report:
        summary["parameters"] = {k: report["parameters"][k] for k in ("total", "trainable")}
    if "flops" in report:
        summary["gflops_per_image"] = report["flops"]["gflops_per_image"]
    if "activations" in report:
        summary["mactivations_per_image"] = report["activations"]["mactivations_per_image"]
    print(json_text(summary))
    if args.output:
        atomic_write_json(args.output, report)


if __name__ == "__main__":
    parser = argument_parser(epilog=__doc__)
    parser.add_argument("--tasks", nargs="+", default=["parameter", "flop"], metavar="TASK",
                        help=f"some of {', '.join(TASKS)}")
    parser.add_argument("--num-inputs", type=int, default=1, help="images to average the counts over (>= 1)")
    parser.add_argument("--dataset", help="registered dataset whose images are counted on (default: DATASETS.TEST[0])")
    parser.add_argument("--output", help="JSON file for every count (per part and per operator too)")
    args = parser.parse_args()
    # `--tasks flop MODEL.DEVICE cpu`: the KEY VALUE pairs after the task names are overrides
    tasks = args.tasks[:next((i for i, t in enumerate(args.tasks) if t not in TASKS), len(args.tasks))]
    args.tasks, args.opts = tasks, args.tasks[len(tasks):] + args.opts
    if not args.tasks or (args.opts and args.opts[0] in TASKS):
        parser.error(f"--tasks: expected some of {', '.join(TASKS)} (then KEY VALUE overrides)")
    if args.num_inputs < 1:
        parser.error(f"--num-inputs {args.num_inputs}: expected at least 1 image")
    with user_errors_as_messages():
        main(args)
