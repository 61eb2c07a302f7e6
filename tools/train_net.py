#!/usr/bin/env python
"""Train or evaluate Mask R-CNN on Cityscapes with detectron2's command line.

    python tools/train_net.py --config-file configs/cs_ft.yaml --num-gpus 4
    python tools/train_net.py --config-file configs/cs_ft.yaml --eval-only MODEL.WEIGHTS path/to/model.pth
    python tools/train_net.py --config-file configs/cs_ft.yaml --num-gpus 4 --resume

    torchrun --nproc_per_node 4 tools/train_net.py --config-file configs/cs_ft.yaml
    srun --ntasks-per-node 4 python tools/train_net.py --config-file configs/cs_ft.yaml

Without CUDA, --num-gpus N starts N CPU processes over gloo. Values given as KEY VALUE pairs run
as given; OUTPUT_DIR/config.yaml is the config that ran.
"""
from cityscapes_ft.engine import argument_parser, launch, setup_cfg, train_or_evaluate
from cityscapes_ft.errors import user_errors_as_messages


def setup(args):
    return setup_cfg(args)


def main(args):
    return train_or_evaluate(args)


if __name__ == "__main__":
    args = argument_parser(epilog=__doc__).parse_args()
    print("Command Line Args:", args)
    with user_errors_as_messages():
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
