#!/usr/bin/env python
"""Draw the predictions an evaluation saved beside the ground truth of the same image; reads our
instances_predictions.json or detectron2's coco_instances_results.json (both written by evaluation).

    python tools/visualize_json_results.py \
        --input output/cs_ft/inference/cityscapes_ft_instance_val/instances_predictions.json \
        --dataset cityscapes_ft_instance_val --output out/vis [--conf-threshold 0.5]
"""
import argparse

import cityscapes_ft  # noqa: F401  registers the datasets
from cityscapes_ft.errors import user_errors_as_messages
from cityscapes_ft.visualization import draw_saved_predictions


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="instances_predictions.json or coco_instances_results.json of an evaluation")
    parser.add_argument("--dataset", default="cityscapes_ft_instance_val")
    parser.add_argument("--output", required=True)
    parser.add_argument("--conf-threshold", type=float, default=0.5)
    parser.add_argument("--num-images", type=int, default=0, help="0: all")
    return parser


if __name__ == "__main__":
    args = get_parser().parse_args()
    with user_errors_as_messages():
        written = draw_saved_predictions(args.input, args.dataset, args.output, args.conf_threshold, args.num_images)
        print(f"Wrote {len(written)} pictures to {args.output}")
