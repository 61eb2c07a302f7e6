"""What tools/train_net.py runs: the config pipeline and the train / evaluate entry point."""
import contextlib
import filecmp
import logging
import os
import shutil

import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import build_checkpointer, load_weights
from ..checks import check_config_runnable, check_output_dir_writable, config_warnings
from ..config import command_line_keys, load_cityscapes_ft_cfg
from ..data import training_dataset_dicts
from ..evaluation import evaluator_types
from ..schedule import resolve_training_schedule
from ..visualization import draw_dataset_predictions, write_run_report
from .run_directory import (
    STAGING_SUFFIX,
    hold_output_dir,
    release_output_dir,
    replace_directory,
    staging_directory,
)
from .ddp import unwrap
from .tracking import finish_tracking
from .trainer import CityscapesFTTrainer

logger = logging.getLogger("cityscapes_ft")


def argument_parser(epilog=None):
    """detectron2's command line (--config-file, --num-gpus, --num-machines, --machine-rank,
    --dist-url, --resume, --eval-only, trailing KEY VALUE overrides). Without CUDA, --num-gpus N
    starts N CPU processes over gloo; --dist-url auto picks a free local port. Processes started
    by torchrun or srun join their job without --num-gpus."""
    return default_argument_parser(epilog=epilog)


def load_yaml_run_config(config_file, opts):
    """(config, typed keys) of a YAML config file and its KEY VALUE overrides."""
    return load_cityscapes_ft_cfg(config_file, opts), command_line_keys(opts)


def setup_cfg(args, load_config=load_yaml_run_config):
    """The one config pipeline, before any trainer exists, top-down: load (detectron2's defaults,
    our keys, the file, the overrides; `load_config(config_file, opts)` -> (config, typed keys):
    YAML here, LazyConfig files through cityscapes_ft.lazy.load_lazy_cityscapes_ft_cfg) -> check -> hold OUTPUT_DIR -> resolve the training
    schedule for this run into the config (command-line values used as typed) -> freeze ->
    detectron2's default_setup, which writes OUTPUT_DIR/config.yaml once: the whole description
    of the run, which reproduces it when passed back with --config-file."""
    cfg, typed = load_config(args.config_file, args.opts)
    check_config_runnable(cfg)
    for name in cfg.DATASETS.TEST:
        evaluator_types(name)  # a test dataset we cannot evaluate is refused now, not after training
    if comm.is_main_process():
        check_output_dir_writable(cfg.OUTPUT_DIR)
        hold_output_dir(cfg.OUTPUT_DIR)
    try:
        setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="cityscapes_ft", abbrev_name="csft")
        schedule = None
        if not args.eval_only:
            cfg, schedule = resolve_config(cfg, typed)
        cfg.freeze()
        with _training_config_kept(cfg.OUTPUT_DIR, args.eval_only):
            default_setup(cfg, args)  # logs the environment and the config, writes config.yaml
    except BaseException:
        release_output_dir(cfg.OUTPUT_DIR)  # a start that fails leaves the folder free
        raise
    for warning in config_warnings(cfg, training=not args.eval_only):
        logger.warning(warning)
    if schedule is not None:
        logger.info(schedule.format())
        for note in schedule.notes:
            logger.warning(note)
    return cfg


EVAL_CONFIG = "config_eval.yaml"


@contextlib.contextmanager
def _training_config_kept(output_dir, evaluating: bool):
    """An evaluation into a folder that already holds a run's config.yaml (`--eval-only`, the
    robustness benchmark on a training run) leaves that file as it was, the description of the
    training: the evaluation's config goes to config_eval.yaml."""
    config = os.path.join(output_dir, "config.yaml")
    if not (evaluating and comm.is_main_process() and os.path.isfile(config)):
        yield
        return
    kept = config + ".kept"
    shutil.copy2(config, kept)
    try:
        yield
    finally:
        if os.path.isfile(config) and not filecmp.cmp(config, kept, shallow=False):
            os.replace(config, os.path.join(output_dir, EVAL_CONFIG))
        os.replace(kept, config)


def resolve_config(cfg, given=None):
    """(config, TrainingSchedule) for training in this process's job: the schedule resolved for
    its number of processes and the training set's size. `given`: the keys typed on the command
    line, used as typed (config.command_line_keys)."""
    return resolve_training_schedule(cfg, comm.get_world_size(), len(training_dataset_dicts(cfg)), given)


def train_or_evaluate(args, trainer_cls=CityscapesFTTrainer, load_config=load_yaml_run_config):
    """The body of tools/train_net.py's main(): train (optionally resuming) or, with --eval-only,
    evaluate MODEL.WEIGHTS (or the last checkpoint with --resume). tools/lazyconfig_train_net.py
    passes load_config=load_lazy_cityscapes_ft_cfg."""
    cfg = setup_cfg(args, load_config)
    try:
        if args.eval_only:
            return _evaluate(args, cfg, trainer_cls)
        trainer = trainer_cls(cfg)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()
        _draw_predictions_and_report(cfg, trainer.model)
        finish_tracking(trainer)  # after the report, which goes along
        return results
    finally:
        release_output_dir(cfg.OUTPUT_DIR)


def _evaluate(args, cfg, trainer_cls):
    """--eval-only: MODEL.WEIGHTS (or, with --resume, the last checkpoint), loaded exactly."""
    model = trainer_cls.build_model(cfg)
    checkpointer = build_checkpointer(cfg, model, save_dir=cfg.OUTPUT_DIR)
    weights = checkpointer.get_checkpoint_file() if args.resume and checkpointer.has_checkpoint() else cfg.MODEL.WEIGHTS
    pinned = cfg.MODEL.WEIGHTS_SHA256 if weights == cfg.MODEL.WEIGHTS else ""
    iteration = load_weights(checkpointer, weights, strict=True, checkpointables=[], sha256=pinned).get("iteration")
    iteration = None if iteration is None else iteration + 1
    model.eval()
    digest = checkpointer.last_sha256
    results = trainer_cls.test(cfg, model, iteration=iteration, checkpoint=weights, checkpoint_sha256=digest)
    if cfg.TEST.AUG.ENABLED:
        results.update(trainer_cls.test_with_TTA(cfg, model, iteration=iteration, checkpoint=weights,
                                                 checkpoint_sha256=digest))
    _draw_predictions_and_report(cfg, model)
    return results


def _draw_predictions_and_report(cfg, model):
    """Main process, after training or evaluation: prediction pictures, then OUTPUT_DIR/report.html."""
    if not comm.is_main_process():
        return
    if cfg.CITYSCAPES_FT.VIS_NUM_IMAGES > 0 and cfg.DATASETS.TEST:
        model = unwrap(model)
        out_dir = os.path.join(cfg.OUTPUT_DIR, "predictions")
        with torch.no_grad():
            files = draw_dataset_predictions(
                cfg, model, cfg.DATASETS.TEST[0], staging_directory(out_dir),
                cfg.CITYSCAPES_FT.VIS_NUM_IMAGES, cfg.CITYSCAPES_FT.VIS_SCORE_THRESH,
            )
        replace_directory(out_dir + STAGING_SUFFIX, out_dir)
        logger.info(f"Drew predictions on {len(files)} images of {cfg.DATASETS.TEST[0]} into {out_dir}")
    names = cfg.DATASETS.TEST or cfg.DATASETS.TRAIN
    class_names = MetadataCatalog.get(names[0]).thing_classes if names else []
    logger.info(f"Run report: {write_run_report(cfg.OUTPUT_DIR, class_names)}")
