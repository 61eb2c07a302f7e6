"""What tools/train_net.py runs: config set-up and the train / evaluate entry point."""
import logging
import os

import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import build_checkpointer
from ..checks import check_config_runnable, check_output_dir_writable
from ..config import load_cityscapes_ft_cfg
from ..weights import load_weights_or_explain
from .schedule import check_no_overridden_computed_keys
from .trainer import CityscapesFTTrainer

logger = logging.getLogger("cityscapes_ft")


def argument_parser(epilog=None):
    """detectron2's command line (--config-file, --num-gpus, --num-machines, --machine-rank,
    --dist-url, --resume, --eval-only, trailing KEY VALUE overrides). Without CUDA, --num-gpus N
    starts N CPU processes over gloo; --dist-url auto picks a free local port."""
    return default_argument_parser(epilog=epilog)


def setup_cfg(args):
    """get_cfg -> add_cityscapes_ft_config -> merge file -> merge overrides -> check -> freeze ->
    default_setup."""
    cfg = load_cityscapes_ft_cfg(args.config_file, args.opts)
    check_config_runnable(cfg)
    check_no_overridden_computed_keys(cfg, args.opts)
    if comm.is_main_process():
        check_output_dir_writable(cfg.OUTPUT_DIR)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="cityscapes_ft", abbrev_name="csft")
    return cfg


def train_or_evaluate(args, trainer_cls=CityscapesFTTrainer):
    """The body of tools/train_net.py's main(): train (optionally resuming) or, with --eval-only,
    evaluate MODEL.WEIGHTS (or the last checkpoint with --resume)."""
    cfg = setup_cfg(args)
    if args.eval_only:
        model = trainer_cls.build_model(cfg)
        checkpointer = build_checkpointer(cfg, model, save_dir=cfg.OUTPUT_DIR)
        checkpoint = load_weights_or_explain(
            lambda: checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume), cfg.MODEL.WEIGHTS
        )
        iteration = checkpoint.get("iteration")
        weights = checkpointer.get_checkpoint_file() if args.resume and checkpointer.has_checkpoint() else cfg.MODEL.WEIGHTS
        results = trainer_cls.test(
            cfg, model, iteration=None if iteration is None else iteration + 1, checkpoint=weights
        )
        _draw_predictions_and_report(cfg, model)
        return results

    trainer = trainer_cls(cfg)
    load_weights_or_explain(lambda: trainer.resume_or_load(resume=args.resume), cfg.MODEL.WEIGHTS)
    results = trainer.train()
    _draw_predictions_and_report(cfg, trainer.model)
    return results


def _draw_predictions_and_report(cfg, model):
    """Main process, after training or evaluation: prediction pictures, then OUTPUT_DIR/report.html."""
    if not comm.is_main_process():
        return
    from ..visualization import draw_dataset_predictions, write_run_report

    if cfg.CITYSCAPES_FT.VIS_NUM_IMAGES > 0 and cfg.DATASETS.TEST:
        model = model.module if hasattr(model, "module") else model
        out_dir = os.path.join(cfg.OUTPUT_DIR, "predictions")
        with torch.no_grad():
            files = draw_dataset_predictions(
                cfg, model, cfg.DATASETS.TEST[0], out_dir, cfg.CITYSCAPES_FT.VIS_NUM_IMAGES,
                cfg.CITYSCAPES_FT.VIS_SCORE_THRESH,
            )
        logger.info(f"Drew predictions on {len(files)} images of {cfg.DATASETS.TEST[0]} into {out_dir}")
    names = cfg.DATASETS.TEST or cfg.DATASETS.TRAIN
    class_names = MetadataCatalog.get(names[0]).thing_classes if names else []
    logger.info(f"Run report: {write_run_report(cfg.OUTPUT_DIR, class_names)}")
