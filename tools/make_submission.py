#!/usr/bin/env python
"""A trained model's predictions on the Cityscapes test split, in the instance-level format the
benchmark server takes: <output>/results/ (one text file per image, its mask PNGs beside it) and
<output>/submission.zip, with a summary of what was written.

    python tools/make_submission.py --config-file configs/cs_ft.yaml --split test --output out/submission \
        MODEL.WEIGHTS output/cs_ft/model_final.pth [--num-gpus 4]

--split val writes the same files for the val split, which cityscapesscripts'
evalInstanceLevelSemanticLabeling can score (CITYSCAPES_RESULTS=<output>/results).
"""
import json

from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from cityscapes_ft.engine import argument_parser, launch
from cityscapes_ft.engine.submission import make_submission
from cityscapes_ft.errors import user_errors_as_messages
from cityscapes_ft.lazy import load_config_file


def main(args):
    setup_logger(name="cityscapes_ft", distributed_rank=comm.get_rank())
    setup_logger(name="detectron2", distributed_rank=comm.get_rank())
    cfg = load_config_file(args.config_file, args.opts)
    cfg.freeze()
    summary = make_submission(cfg, args.split, args.output)
    if summary:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    parser = argument_parser(epilog=__doc__)
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--output", required=True, help="folder for results/, submission.zip and submission.json")
    args = parser.parse_args()
    with user_errors_as_messages():
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
