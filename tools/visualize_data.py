#!/usr/bin/env python
"""Draw the ground truth of a registered split, as loaded or after the training mapper.

    python tools/visualize_data.py --config-file configs/cs_ft.yaml --source dataloader \
        --output-dir out/data [--dataset cityscapes_ft_instance_train] [--num-images 8] [--show]

As detectron2's tool: pictures go to --output-dir (default: the current folder), or with --show
into a window (any key: next, Esc: stop) where there is a display.
"""
import argparse

from cityscapes_ft.errors import user_errors_as_messages
from cityscapes_ft.lazy import load_config_file
from cityscapes_ft.visualization import DemoInputError, draw_dataset
from cityscapes_ft.visualization.dataset_viewer import dataset_pictures
from cityscapes_ft.visualization.demo import display_available, show_in_window


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--source", choices=["annotation", "dataloader"], default="annotation")
    parser.add_argument("--dataset", help="registered name; default DATASETS.TRAIN[0]")
    parser.add_argument("--output-dir", default="./")
    parser.add_argument("--show", action="store_true", help="show the pictures in a window instead")
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    return parser


if __name__ == "__main__":
    args = get_parser().parse_args()
    with user_errors_as_messages():
        cfg = load_config_file(args.config_file, args.opts)
        dataset = args.dataset or cfg.DATASETS.TRAIN[0]
        if args.show:
            if not display_available():
                raise DemoInputError("--show needs a display (and OpenCV built with windows): leave it out to "
                                     "write the pictures to --output-dir")
            show_in_window(picture for _, picture in dataset_pictures(cfg, dataset, args.source, args.num_images))
        else:
            written = draw_dataset(cfg, dataset, args.source, args.output_dir, args.num_images)
            print(f"Wrote {len(written)} pictures to {args.output_dir}")
