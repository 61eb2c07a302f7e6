"""The cityscapes-ft trainer: a detectron2 TrainerBase that builds its parts openly, as
DefaultTrainer does, with our loader, optimizer, step and hooks."""
import logging
import os
import random
import weakref
from collections import OrderedDict

import numpy as np
import torch
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.engine import TrainerBase, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.modeling import GeneralizedRCNNWithTTA, build_model
from detectron2.solver import build_lr_scheduler
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, EventStorage, TensorboardXWriter
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger
from fvcore.nn.precise_bn import get_bn_modules

from ..checkpoint import build_checkpointer, load_weights
from ..checks import FROM_SCRATCH_FROZEN_BN, config_warnings
from ..compat import run_after_backward_hooks, write_step_metrics
from ..data import build_mapper, log_training_set, training_dataset_dicts, training_repeat_factors
from ..data.resumable_loader import ResumableTrainLoader, derived_seed
from ..errors import CheckpointUnreadable, CityscapesFTError, TrainingDiverged
from ..evaluation import build_evaluator, flat_metric_tasks, format_results_tables
from ..schedule import check_schedule_resolved, per_process_batch
from ..utils import atomic_write_json
from .ddp import wrap_for_distributed
from .hooks import LayerwiseLRScheduler, PeriodicCheckpointerAfterEvaluation, StagedBackboneFreeze
from .metrics_writer import AtomicJSONWriter
from .optimizer import build_layerwise_optimizer, build_lazy_optimizer, clip_gradients
from .run_directory import STAGING_SUFFIX, replace_directory, staging_directory
from .stopping import build_stopping_hooks
from .tracking import TrackingRun, build_tracking_writers
from .train_loop import GradientAccumulationStep

logger = logging.getLogger(__name__)


class BestCheckpointerWithState(hooks.BestCheckpointer):
    """detectron2's BestCheckpointer whose best score and iteration are in the trainer's
    checkpoints, so `--resume` keeps comparing against them (v0.6's forgets them, and the first
    evaluation after a resume then overwrites model_best.pth, even with a worse model)."""

    def state_dict(self):
        return {"best_metric": self.best_metric, "best_iter": self.best_iter}

    def load_state_dict(self, state_dict):
        self.best_metric = state_dict.get("best_metric")
        self.best_iter = state_dict.get("best_iter")


class CityscapesFTTrainer(TrainerBase):
    """Trains a detectron2 model as DefaultTrainer does (the same classmethods to override:
    build_model, build_optimizer, build_lr_scheduler, build_train_loader, build_test_loader,
    build_evaluator, test; `build_hooks`; `resume_or_load`; `train`), with the training recipe:

    - layer-wise LR and weight decay per parameter kind (`build_optimizer`);
    - staged backbone freezing (`StagedBackboneFreeze`);
    - gradient accumulation and AMP (`GradientAccumulationStep`);
    - exact resume: checkpoints keep the optimizer (and AMP grad scaler), the data stream's
      position and the best checkpoint's score; the random generators of each step are seeded
      from (run seed, rank, iteration), so a resumed run draws what the uninterrupted one would;
    - CPU distributed training (gloo).

    `__init__` builds the parts in the open: model, optimizer, loader, the DDP wrapper, the step,
    the LR scheduler and the checkpointer. The config it gets is already resolved
    (engine.defaults.setup_cfg): the schedule is in iterations at the run's batch."""

    def __init__(self, cfg):
        super().__init__()
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        check_schedule_resolved(cfg, comm.get_world_size())
        self.cfg = cfg
        model = self.build_model(cfg)
        self.optimizer = self.build_optimizer(cfg, model)
        self.data_loader = self.build_train_loader(cfg)
        self.model = wrap_for_distributed(model)
        self.model.train()
        self.step = GradientAccumulationStep(
            self.optimizer, accumulation_steps=cfg.CITYSCAPES_FT.GRADIENT_ACCUMULATION_STEPS,
            amp=cfg.SOLVER.AMP.ENABLED,
            clip_gradients=lambda optimizer: clip_gradients(optimizer, cfg.SOLVER.CLIP_GRADIENTS),
        )
        self.scheduler = self.build_lr_scheduler(cfg, self.optimizer)
        self.checkpointer = build_checkpointer(cfg, model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        # The stream's seed (cfg.SEED, or one drawn for the run and kept in its checkpoints).
        self.run_seed = self.data_loader.seed
        self._batches = None  # the iterator over data_loader; made at the first step
        self._last_eval_results = None
        # The starting point (MODEL.WEIGHTS) and its SHA-256, kept in checkpoints and eval records.
        self.init_weights = {"path": cfg.MODEL.WEIGHTS, "sha256": None}
        self.register_hooks(self.build_hooks())

    # ---- checkpointed state -------------------------------------------------------------------
    def state_dict(self):
        """TrainerBase's (iteration, hooks) plus the step's state under "_trainer" (as detectron2's
        trainers keep the optimizer), the data stream's position and the run seed."""
        state = super().state_dict()
        # The last iteration done: after the loop TrainerBase leaves `iter` at max_iter, where the
        # final checkpoint is written (after the final evaluation), and a resume starts one later.
        state["iteration"] = min(state["iteration"], self.max_iter - 1)
        state["_trainer"] = self.step.state_dict()
        state["data"] = self.data_loader.state_dict()
        state["run_seed"] = self.run_seed
        state["init_weights"] = self.init_weights
        return state

    def load_state_dict(self, state_dict):
        """Restores state_dict(); checkpoints of detectron2's own trainers resume too (their LR
        hook's name; v0.6's without optimizer state resume with fresh momentum)."""
        hook_states = state_dict.get("hooks", {})
        if "LRScheduler" in hook_states and "LayerwiseLRScheduler" not in hook_states:
            hook_states["LayerwiseLRScheduler"] = hook_states.pop("LRScheduler")
        super().load_state_dict(state_dict)
        inner = state_dict.get("_trainer")
        if inner is None:
            logger.warning("Checkpoint has no optimizer state (made by plain detectron2 v0.6?): "
                           "resuming with fresh momentum")
        else:
            try:
                self.step.load_state_dict(inner)
            except ValueError as e:  # parameter groups of another optimizer layout
                logger.warning(f"The checkpoint's optimizer state does not fit this optimizer ({e}): "
                               "resuming with fresh momentum")
        if "data" in state_dict:
            self.data_loader.load_state_dict(state_dict["data"])
        else:
            logger.warning("Checkpoint has no data-stream position: the data order starts over")
        self.run_seed = state_dict.get("run_seed", self.run_seed)
        self.init_weights = state_dict.get("init_weights", self.init_weights)
        self._batches = None  # the stream restarts from the position loaded

    def resume_or_load(self, resume=True):
        """With `resume` and a checkpoint in OUTPUT_DIR: the newest checkpoint that can be read,
        loaded exactly (a tensor missing, left over or of another shape is refused); one that
        cannot be read is skipped with a warning naming it. Otherwise MODEL.WEIGHTS, as a
        fine-tuning start (head transfer, load report). A resumed run that had finished but was
        killed before model_final.pth was written writes it now."""
        if resume and self.checkpointer.has_checkpoint():
            self._load_newest_readable_checkpoint()
            self.start_iter = self.iter + 1
        else:
            load_weights(self.checkpointer, self.cfg.MODEL.WEIGHTS, strict=False, checkpointables=[],
                         sha256=self.cfg.MODEL.WEIGHTS_SHA256)
            self.init_weights = {"path": self.cfg.MODEL.WEIGHTS, "sha256": self.checkpointer.last_sha256}
        final = os.path.join(self.cfg.OUTPUT_DIR, "model_final.pth")
        if resume and self.start_iter >= self.max_iter and comm.is_main_process() and not os.path.isfile(final):
            logger.info(f"The run had finished but {final} is missing: writing it")
            self.checkpointer.save("model_final", iteration=self.iter)

    def _load_newest_readable_checkpoint(self):
        checkpointer = self.checkpointer
        tagged = checkpointer.get_checkpoint_file()

        def iteration(path):
            name = os.path.basename(path)
            if name == "model_final.pth":
                return float("inf")
            digits = name[len("model_"):-len(".pth")]
            return int(digits) if digits.isdigit() else -1

        others = [os.path.join(checkpointer.save_dir, f) for f in os.listdir(checkpointer.save_dir)
                  if f.startswith("model_") and f.endswith(".pth") and iteration(f) >= 0]
        skipped = []
        for path in [tagged] + sorted(set(others) - {tagged}, key=iteration, reverse=True):
            if not os.path.isfile(path):
                logger.warning(f"last_checkpoint names {path}, which does not exist: skipping it")
                skipped.append(path)
                continue
            try:
                load_weights(checkpointer, path, strict=True)
            except CheckpointUnreadable as e:
                logger.warning(f"--resume: skipping {path}: {e}")
                skipped.append(path)
                continue
            if skipped:
                logger.warning(f"--resume continues from {path}, the newest checkpoint that loads "
                               f"(skipped: {', '.join(skipped)})")
            return
        raise CheckpointUnreadable(
            f"--resume found no checkpoint in {checkpointer.save_dir} that can be read (tried "
            f"{', '.join(skipped)}). Restore one, or start over without --resume"
        )

    # ---- the loop -----------------------------------------------------------------------------
    def train(self):
        """Train from start_iter to max_iter, or until a hook calls `request_stop`; returns the
        last evaluation's results (or None). TrainerBase.train's loop, written openly (as
        detectron2's tools/plain_train_net.py does) for the stop."""
        logger.info(f"Starting training from iteration {self.start_iter}")
        self.iter = self.start_iter
        self.stop_reason = None
        with EventStorage(self.start_iter) as self.storage:
            try:
                self.before_train()
                for self.iter in range(self.start_iter, self.max_iter):
                    if self.stop_reason:  # a hook stopped the run before it (re)started
                        break
                    self.before_step()
                    self.run_step()
                    self.after_step()
                    if self.stop_reason:  # after the iteration's hooks: its checkpoint, its records
                        break
                else:
                    self.iter += 1
            except CityscapesFTError as e:  # ours end the run in one line (the command line prints it)
                logger.error(f"Training stopped: {str(e).splitlines()[0]}")
                raise
            except Exception:
                logger.exception("Exception during training:")
                raise
            finally:
                self.after_train()
        return self._last_eval_results

    def request_stop(self, reason: str):
        """Ends training after the current iteration (all its hooks run); `reason` is logged.
        Every process must ask at the same iteration (hooks decide from what all processes have)."""
        if not self.stop_reason:
            logger.info(f"Stopping training: {reason}")
        self.stop_reason = reason

    def seed_step(self):
        """Seed torch, numpy and python random generators from (run seed, rank, iteration)."""
        seed = derived_seed(self.run_seed, comm.get_rank(), self.iter)
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)

    def run_step(self):
        """One optimizer step, its random generators seeded from (run seed, rank, iteration):
        forward/backward over the accumulation steps, the hooks' after_backward, detectron2's
        loss metrics (which stop on a NaN or infinite loss), the optimizer step."""
        self.seed_step()
        if self._batches is None:
            self._batches = iter(self.data_loader)
        try:  # detectron2's box head and its loss metrics raise this on NaN or inf
            losses, data_time = self.step.forward_backward(self.model, self._batches)
            run_after_backward_hooks(self)
            write_step_metrics(losses, data_time, self.iter)
        except FloatingPointError as e:
            raise self._diverged(e) from e
        self.step.optimizer_step()

    def _diverged(self, error) -> TrainingDiverged:
        last = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() else None
        previous = {k: round(v[0], 4) for k, v in self.storage.latest().items() if k.startswith("loss")}
        likely = FROM_SCRATCH_FROZEN_BN in config_warnings(self.cfg, True)
        return TrainingDiverged(
            f"Training stopped at iteration {self.iter}: the loss is NaN or infinite "
            f"({' '.join(line.strip() for line in str(error).splitlines())}); loss terms at the "
            f"iteration before: {previous or 'none logged yet'}. The last good checkpoint is "
            f"{last or '(none written yet)'}; resume from it with --resume after lowering "
            "SOLVER.BASE_LR, lengthening SOLVER.WARMUP_ITERS or enabling SOLVER.CLIP_GRADIENTS.ENABLED"
            + (f". Likely cause: {FROM_SCRATCH_FROZEN_BN}" if likely else "")
        )

    # ---- hooks and writers --------------------------------------------------------------------
    def build_writers(self):
        """The console and metrics.json (written atomically, resume-aware), always; then what
        CITYSCAPES_FT.WRITERS names: TensorBoard, MLflow, W&B (engine/tracking.py)."""
        PathManager.mkdirs(self.cfg.OUTPUT_DIR)
        writers = [
            CommonMetricPrinter(self.max_iter),
            AtomicJSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
        ]
        if "tensorboard" in self.cfg.CITYSCAPES_FT.WRITERS:
            writers.append(TensorboardXWriter(self.cfg.OUTPUT_DIR))
        return writers + build_tracking_writers(self.cfg)

    def build_hooks(self):
        """The hooks in their order. Evaluation (and the best checkpoint it may make) runs before
        the metrics file is written and before the periodic checkpoint of the same iteration,
        so that checkpoint holds the best score so far and the iteration's full record is
        written before its checkpoint. Console lines every LOG_PERIOD, metrics.json and
        TensorBoard every METRICS_PERIOD (detectron2: both every 20)."""
        cfg = self.cfg
        freeze = cfg.CITYSCAPES_FT.BACKBONE_FREEZE
        ret = [hooks.IterationTimer()]
        if freeze.ITERS > 0:
            ret.append(StagedBackboneFreeze(freeze.ITERS, include_fpn=freeze.INCLUDE_FPN))
        ret.append(LayerwiseLRScheduler())
        if cfg.TEST.PRECISE_BN.ENABLED and get_bn_modules(self.model):
            precise_bn_cfg = cfg.clone()
            precise_bn_cfg.defrost()
            precise_bn_cfg.DATALOADER.NUM_WORKERS = 0
            ret.append(hooks.PreciseBN(cfg.TEST.EVAL_PERIOD, self.model,
                                       self.build_train_loader(precise_bn_cfg), cfg.TEST.PRECISE_BN.NUM_ITER))
        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, self._evaluate_during_training))
        if cfg.TEST.AUG.ENABLED:  # once, after training, on every process (as detectron2's train_net.py)
            ret.append(hooks.EvalHook(0, self._evaluate_with_TTA_after_training))
        ret.extend(build_stopping_hooks(cfg))  # early stopping, a sweep's pruning: every process
        self.tracking = None  # the MLflow / W&B runs (main process)
        if not comm.is_main_process():
            return ret
        metric = cfg.CITYSCAPES_FT.BEST_CHECKPOINT_METRIC
        if metric and cfg.TEST.EVAL_PERIOD > 0:
            best = build_checkpointer(cfg, self.model, cfg.OUTPUT_DIR, tag_last=False,
                                      trainer=weakref.proxy(self))
            ret.append(BestCheckpointerWithState(cfg.TEST.EVAL_PERIOD, best, metric,
                                                 mode=cfg.CITYSCAPES_FT.BEST_CHECKPOINT_MODE))
        console, *files = self.build_writers()
        ret.append(hooks.PeriodicWriter(files, period=cfg.CITYSCAPES_FT.METRICS_PERIOD))
        self.tracking = TrackingRun(files)
        ret.append(self.tracking)
        ret.append(PeriodicCheckpointerAfterEvaluation(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))
        ret.append(hooks.PeriodicWriter([console], period=cfg.CITYSCAPES_FT.LOG_PERIOD))
        return ret

    def checkpoint_of_iteration(self, iteration):
        """The file detectron2's PeriodicCheckpointer writes for `iteration` (0-based), or None."""
        if iteration >= self.max_iter - 1:
            name = "model_final.pth"
        elif (iteration + 1) % self.cfg.SOLVER.CHECKPOINT_PERIOD == 0:
            name = f"model_{iteration:07d}.pth"
        else:
            return None
        return os.path.join(self.cfg.OUTPUT_DIR, name)

    def _evaluate_during_training(self):
        # Iterations done: self.iter is the current one in after_step, max_iter in after_train.
        done = min(self.iter + 1, self.max_iter)
        checkpoint = self.checkpoint_of_iteration(done - 1) if comm.is_main_process() else None
        self._last_eval_results = self.test(self.cfg, self.model, iteration=done, checkpoint=checkpoint,
                                            init_weights=self.init_weights)
        return self._last_eval_results

    def _evaluate_with_TTA_after_training(self):
        checkpoint = self.checkpoint_of_iteration(self.max_iter - 1) if comm.is_main_process() else None
        return self.test_with_TTA(self.cfg, self.model, iteration=self.max_iter, checkpoint=checkpoint,
                                  init_weights=self.init_weights)

    # ---- the parts, as DefaultTrainer's classmethods ------------------------------------------
    @classmethod
    def build_model(cls, cfg):
        """detectron2's build_model (the META_ARCHITECTURE registry), logged as DefaultTrainer does."""
        model = build_model(cfg)
        logging.getLogger(__name__).info(f"Model:\n{model}")
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        """SGD over layer-wise parameter groups (engine/optimizer.py), or a LazyConfig run's own
        optimizer split into the same parts (lazy.build_lazy_optimizer); detectron2's optional
        gradient clipping (SOLVER.CLIP_GRADIENTS) runs in the step, before the optimizer's."""
        if cfg.CITYSCAPES_FT.LAZY_CONFIG.FILE:
            return build_lazy_optimizer(cfg, model)
        return build_layerwise_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        """detectron2's scheduler: warmup, then steps (SOLVER.LR_SCHEDULER_NAME)."""
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        """A ResumableTrainLoader over training_dataset_dicts(cfg): this process's share of
        SOLVER.IMS_PER_BATCH / accumulation steps per batch, aspect-ratio grouped, resumable at
        the batch where a checkpoint stopped."""
        world = comm.get_world_size()
        batch_size = per_process_batch(
            cfg.SOLVER.IMS_PER_BATCH, world, cfg.CITYSCAPES_FT.GRADIENT_ACCUMULATION_STEPS
        )
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        dicts = training_dataset_dicts(cfg)
        repeat_factors = training_repeat_factors(cfg, dicts)
        log_training_set(cfg, dicts, repeat_factors, cfg.OUTPUT_DIR if comm.is_main_process() else None)
        return ResumableTrainLoader(
            dicts, build_mapper(cfg, is_train=True), repeat_factors=repeat_factors,
            batch_size=batch_size, seed=seed, rank=comm.get_rank(),
            world_size=world, aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            skip_bad_samples=cfg.CITYSCAPES_FT.ON_BAD_SAMPLE == "skip",
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """detectron2's test loader with the mapper INPUT.DATASET_MAPPER_NAME names."""
        return build_detection_test_loader(cfg, dataset_name, mapper=build_mapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """The evaluator(s) of the dataset's `evaluator_type` (evaluation.build_evaluator)."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test_with_TTA(cls, cfg, model, *, iteration=None, checkpoint=None, checkpoint_sha256=None,
                      init_weights=None):
        """Evaluate with test-time augmentation (TEST.AUG: the image at each of TEST.AUG.MIN_SIZES,
        and flipped with TEST.AUG.FLIP) through detectron2's GeneralizedRCNNWithTTA. As in
        detectron2's train_net.py, the outputs go to OUTPUT_DIR/inference_TTA/ and every result key
        ends in "_TTA"."""
        logger.info(f"Evaluating with test-time augmentation: short sides {tuple(cfg.TEST.AUG.MIN_SIZES)}, "
                    f"max size {cfg.TEST.AUG.MAX_SIZE}, flip {cfg.TEST.AUG.FLIP}")
        results = cls.test(cfg, GeneralizedRCNNWithTTA(cfg, model), iteration=iteration, checkpoint=checkpoint,
                           checkpoint_sha256=checkpoint_sha256, init_weights=init_weights, folder_suffix="_TTA")
        if len(cfg.DATASETS.TEST) == 1:
            return OrderedDict((k + "_TTA", v) for k, v in results.items())
        return OrderedDict((name, OrderedDict((k + "_TTA", v) for k, v in res.items())) for name, res in results.items())

    @classmethod
    def test(cls, cfg, model, evaluators=None, *, iteration=None, checkpoint=None, checkpoint_sha256=None,
             init_weights=None, folder_suffix=""):
        """Evaluate on every cfg.DATASETS.TEST; print tables and write one JSON per dataset to
        OUTPUT_DIR/eval_results/ (with the dataset, iteration, the checkpoint evaluated and, for a
        file loaded to be evaluated, its SHA-256, and `init_weights`: the run's starting point and
        its SHA-256). Returns results as DefaultTrainer.test does. folder_suffix names the outputs
        of a variant apart (OUTPUT_DIR/inference<suffix>/, <dataset><suffix>*.json)."""
        if evaluators is not None and len(evaluators) != len(cfg.DATASETS.TEST):
            raise ValueError(f"{len(evaluators)} evaluators for {len(cfg.DATASETS.TEST)} test datasets")
        results = OrderedDict()
        for idx, dataset_name in enumerate(cfg.DATASETS.TEST):
            loader = cls.build_test_loader(cfg, dataset_name)
            final = staged = None
            if evaluators:
                evaluator = evaluators[idx]
            else:
                # Written beside the previous evaluation's folder, which it replaces whole at the
                # end: a kill during evaluation leaves the previous outputs as they were.
                final = os.path.join(cfg.OUTPUT_DIR, "inference" + folder_suffix, dataset_name)
                staged = final + STAGING_SUFFIX
                if comm.is_main_process():
                    staging_directory(final)
                comm.synchronize()
                evaluator = cls.build_evaluator(cfg, dataset_name, output_folder=staged)
            res = inference_on_dataset(model, loader, evaluator)
            results[dataset_name] = res
            if comm.is_main_process():
                record = {"dataset": dataset_name, "iteration": iteration, "checkpoint": checkpoint,
                          "checkpoint_sha256": checkpoint_sha256, "init_weights": init_weights,
                          "results": res}
                if staged:
                    atomic_write_json(os.path.join(staged, "results.json"), record)
                    replace_directory(staged, final)
                class_names = MetadataCatalog.get(dataset_name).thing_classes
                logger.info(
                    f"Evaluation of {dataset_name}{folder_suffix} (iteration {iteration}, weights {checkpoint}):\n"
                    + format_results_tables(res, class_names)
                )
                print_csv_format(flat_metric_tasks(res))
                stem = dataset_name + folder_suffix
                name = f"{stem}_iter{iteration:07d}.json" if iteration is not None else f"{stem}.json"
                path = os.path.join(cfg.OUTPUT_DIR, "eval_results", name)
                atomic_write_json(path, record)
                logger.info(f"Evaluation results written to {path}")
        if len(results) == 1:
            results = list(results.values())[0]
        return results
