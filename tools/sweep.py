#!/usr/bin/env python
"""Search hyper-parameters with Optuna: each trial trains in SWEEP_DIR/trial_<n> as
tools/train_net.py would, with values from the search space on top of the KEY VALUE overrides.

    python tools/sweep.py --config-file configs/cs_ft.yaml --space configs/sweeps/cs_ft_space.yaml \\
        --trials 20 --output output/cs_ft_sweep --num-gpus 4

Run the same command again to continue a killed sweep, or on several machines with one
--storage (an RDB URL, e.g. postgresql://...) and --study to share the trials. Outputs:
SWEEP_DIR/best_config.yaml, trials.csv, trials.json and sweep.html.
"""
import argparse

from cityscapes_ft.errors import user_errors_as_messages
from cityscapes_ft.engine.sweep.runner import SweepSettings, SweepWorker
from cityscapes_ft.engine.sweep.study import DEFAULT_PRUNER, DEFAULT_SAMPLER, parse_arguments
from detectron2.utils.logger import setup_logger


def argument_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="the training config")
    p.add_argument("--space", required=True, metavar="FILE", help="search space YAML: config keys with Optuna's arguments")
    p.add_argument("--trials", type=int, required=True, help="trials in the sweep (all workers together)")
    p.add_argument("--output", required=True, metavar="SWEEP_DIR", help="trial folders and the sweep's outputs")
    p.add_argument("--storage", default="", help="Optuna storage URL (default: sqlite:///SWEEP_DIR/study.db)")
    p.add_argument("--study", default="", help="study name (default: SWEEP_DIR's name)")
    p.add_argument("--num-gpus", type=int, default=1, help="processes per trial (CPU processes without CUDA)")
    p.add_argument("--sampler", default=DEFAULT_SAMPLER, help="an optuna.samplers class")
    p.add_argument("--sampler-args", default="", metavar="YAML", help="its arguments, e.g. '{seed: 0}'")
    p.add_argument("--pruner", default=DEFAULT_PRUNER, help="an optuna.pruners class (NopPruner: none); "
                   "kept in the study when it is created")
    p.add_argument("--pruner-args", default="", metavar="YAML", help="its arguments, e.g. '{n_startup_trials: 3}'")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides for every trial")
    return p


def main(args):
    setup_logger(output=args.output, name="cityscapes_ft.engine.sweep", abbrev_name="sweep")
    settings = SweepSettings(
        config_file=args.config_file, space_file=args.space, trials=args.trials, output=args.output,
        storage=args.storage, study=args.study, num_gpus=args.num_gpus, opts=args.opts,
        sampler=args.sampler, sampler_args=parse_arguments(args.sampler_args, "--sampler-args"),
        pruner=args.pruner, pruner_args=parse_arguments(args.pruner_args, "--pruner-args"),
    )
    SweepWorker(settings).run()


if __name__ == "__main__":
    args = argument_parser().parse_args()
    with user_errors_as_messages():
        main(args)
