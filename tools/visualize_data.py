#!/usr/bin/env python
"""Draw the ground truth of a registered split, as loaded or after the training mapper.

    python tools/visualize_data.py --config-file configs/cs_ft.yaml --source dataloader \
        --output-dir out/data [--dataset cityscapes_ft_instance_train] [--num-images 8]
"""
import argparse

from cityscapes_ft.config import load_cityscapes_ft_cfg
from cityscapes_ft.errors import user_errors_as_messages
from cityscapes_ft.visualization import draw_dataset


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--source", choices=["annotation", "dataloader"], default="annotation")
    parser.add_argument("--dataset", help="registered name; default DATASETS.TRAIN[0]")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    return parser


if __name__ == "__main__":
    args = get_parser().parse_args()
    with user_errors_as_messages():
        cfg = load_cityscapes_ft_cfg(args.config_file, args.opts)
        written = draw_dataset(cfg, args.dataset or cfg.DATASETS.TRAIN[0], args.source, args.output_dir, args.num_images)
        print(f"Wrote {len(written)} pictures to {args.output_dir}")
