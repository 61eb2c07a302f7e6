#!/usr/bin/env python
"""Train or evaluate from a detectron2 LazyConfig (.py) file with detectron2's command line.

    python tools/lazyconfig_train_net.py --config-file configs/cs_ft_R_50_FPN_100ep_LSJ.py --num-gpus 8
    python tools/lazyconfig_train_net.py --config-file configs/cs_ft_R_50_FPN_100ep_LSJ.py --resume
    python tools/lazyconfig_train_net.py --config-file configs/cs_ft_R_50_FPN_100ep_LSJ.py --eval-only \\
        train.init_checkpoint=output/cs_ft_R_50_FPN_100ep_LSJ/model_final.pth

Overrides are key=value: detectron2's LazyConfig keys (train.max_iter=100, optimizer.lr=0.01,
dataloader.train.total_batch_size=8, model.*), and cityscapes-ft's keys in upper case
(CITYSCAPES_FT.EARLY_STOP.PATIENCE=2). The run is the same as tools/train_net.py's (launcher, datasets,
evaluation, resume, report); OUTPUT_DIR/config.yaml describes it and runs again with tools/train_net.py.
"""
from cityscapes_ft.engine import argument_parser, launch, train_or_evaluate
from cityscapes_ft.errors import user_errors_as_messages
from cityscapes_ft.lazy import load_lazy_cityscapes_ft_cfg


def main(args):
    return train_or_evaluate(args, load_config=load_lazy_cityscapes_ft_cfg)


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
