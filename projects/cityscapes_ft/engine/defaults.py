"""What tools/train_net.py runs: the config pipeline and the train / evaluate entry point."""
import logging
import os

import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import build_checkpointer
from ..checks import check_config_runnable, check_output_dir_writable, config_warnings
from ..config import explicit_config_keys, load_cityscapes_ft_cfg
from ..data import training_dataset_dicts
from ..errors import CityscapesFTError
from ..schedule import resolve_training_schedule
from ..utils import atomic_open, json_text
from ..visualization import draw_dataset_predictions, write_run_report
from ..weights import load_weights_or_explain
from .run_directory import (
    STAGING_SUFFIX,
    commit_run_files,
    hold_output_dir,
    release_output_dir,
    replace_directory,
    staging_directory,
)
from .optimizer import unwrap
from .trainer import CityscapesFTTrainer

logger = logging.getLogger("cityscapes_ft")


def argument_parser(epilog=None):
    """detectron2's command line (--config-file, --num-gpus, --num-machines, --machine-rank,
    --dist-url, --resume, --eval-only, trailing KEY VALUE overrides). Without CUDA, --num-gpus N
    starts N CPU processes over gloo; --dist-url auto picks a free local port. Processes started
    by torchrun or srun join their job without --num-gpus."""
    return default_argument_parser(epilog=epilog)


def setup_cfg(args):
    """The one config pipeline, before any trainer exists: load (defaults, our keys, the file, the
    KEY VALUE pairs) -> check -> resolve the training schedule for this run (the values the user
    gave are kept; the rest derived) -> freeze -> default_setup, which writes
    OUTPUT_DIR/config.yaml: the config that runs, which reproduces this schedule when passed back
    with --config-file. Beside it: config_given.yaml (before resolution) and schedule.json."""
    cfg = load_cityscapes_ft_cfg(args.config_file, args.opts)
    check_config_runnable(cfg)
    run_directory = None
    if comm.is_main_process():
        check_output_dir_writable(cfg.OUTPUT_DIR)
        run_directory = hold_output_dir(cfg.OUTPUT_DIR)
    try:
        cfg = _resolve_freeze_and_write(args, cfg, run_directory)
    except BaseException:
        release_output_dir(cfg.OUTPUT_DIR)  # a start that fails leaves the folder free
        raise
    return cfg


def _resolve_freeze_and_write(args, cfg, run_directory):
    """setup_cfg after the checks: logging, the schedule resolved, freeze, default_setup, the
    run's description files staged."""
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="cityscapes_ft", abbrev_name="csft")
    # Our errors end the run with one line; detectron2's trainer would log their traceback too.
    logging.getLogger("detectron2.engine.train_loop").addFilter(_no_traceback_for_user_errors)
    given, schedule = cfg.clone(), None
    if not args.eval_only:
        cfg, schedule = resolve_config(cfg, explicit_config_keys(args.config_file, args.opts))
    cfg.freeze()
    previous_config = _read_if_exists(os.path.join(cfg.OUTPUT_DIR, "config.yaml"))
    default_setup(cfg, args)  # logs the config and writes config.yaml
    if run_directory is not None:
        # Nothing of an earlier run in OUTPUT_DIR is replaced before this one has started.
        if previous_config is not None:
            with atomic_open(os.path.join(cfg.OUTPUT_DIR, "config.yaml")) as f:
                f.write(previous_config)
        run_directory.stage("config.yaml", cfg.dump())
        if schedule is not None:
            run_directory.stage("config_given.yaml", given.dump())
            run_directory.stage("schedule.json", json_text(schedule.as_dict()))
    for warning in config_warnings(cfg, training=not args.eval_only):
        logger.warning(warning)
    if schedule is not None:
        logger.info(schedule.format())
        for note in schedule.notes:
            logger.warning(note)
    return cfg


def _read_if_exists(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _no_traceback_for_user_errors(record):
    if record.exc_info and isinstance(record.exc_info[1], CityscapesFTError):
        record.msg, record.args = f"Training stopped: {str(record.exc_info[1]).splitlines()[0]}", ()
        record.exc_info = record.exc_text = None
    return True


def resolve_config(cfg, explicit=None):
    """(config, TrainingSchedule) for training in this process's job: the schedule resolved for
    its number of processes and the training set's size. `explicit`: the keys the user set, used
    as given (config.explicit_config_keys)."""
    return resolve_training_schedule(cfg, comm.get_world_size(), len(training_dataset_dicts(cfg)), explicit)


def train_or_evaluate(args, trainer_cls=CityscapesFTTrainer):
    """The body of tools/train_net.py's main(): train (optionally resuming) or, with --eval-only,
    evaluate MODEL.WEIGHTS (or the last checkpoint with --resume)."""
    cfg = setup_cfg(args)
    try:
        if args.eval_only:
            return _evaluate(args, cfg, trainer_cls)
        trainer = trainer_cls(cfg)
        load_weights_or_explain(lambda: trainer.resume_or_load(resume=args.resume), cfg.MODEL.WEIGHTS)
        commit_run_files(cfg.OUTPUT_DIR)
        results = trainer.train()
        _draw_predictions_and_report(cfg, trainer.model)
        return results
    finally:
        release_output_dir(cfg.OUTPUT_DIR)


def _evaluate(args, cfg, trainer_cls):
    """--eval-only: MODEL.WEIGHTS (or, with --resume, the last checkpoint), loaded exactly."""
    model = trainer_cls.build_model(cfg)
    checkpointer = build_checkpointer(cfg, model, save_dir=cfg.OUTPUT_DIR, strict=True)
    checkpoint = load_weights_or_explain(
        lambda: checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume), cfg.MODEL.WEIGHTS
    )
    commit_run_files(cfg.OUTPUT_DIR)
    iteration = checkpoint.get("iteration")
    weights = checkpointer.get_checkpoint_file() if args.resume and checkpointer.has_checkpoint() else cfg.MODEL.WEIGHTS
    iteration = None if iteration is None else iteration + 1
    results = trainer_cls.test(cfg, model, iteration=iteration, checkpoint=weights)
    if cfg.TEST.AUG.ENABLED:
        results.update(trainer_cls.test_with_TTA(cfg, model, iteration=iteration, checkpoint=weights))
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
