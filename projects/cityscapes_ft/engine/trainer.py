"""The cityscapes-ft trainer: detectron2's DefaultTrainer with our mapper, evaluator and fixes."""
import contextlib
import gc
import logging
import os
import random
import weakref
from collections import OrderedDict

import detectron2.engine.defaults as detectron2_defaults
import numpy as np
import torch
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.engine import DefaultTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.modeling import GeneralizedRCNNWithTTA
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, TensorboardXWriter
from detectron2.utils.file_io import PathManager
from fvcore.nn.precise_bn import get_bn_modules
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import CityscapesFTCheckpointer, build_checkpointer
from ..checks import FROM_SCRATCH_FROZEN_BN, config_warnings
from ..data import build_mapper, log_training_set, training_dataset_dicts, training_repeat_factors
from ..data.resumable_loader import ResumableTrainLoader, derived_seed
from ..errors import CheckpointUnreadable, TrainingDiverged, WeightsNotAvailable
from ..evaluation import CityscapesInstanceSegEvaluator, format_results_tables
from ..schedule import check_schedule_resolved, per_process_batch
from ..utils import atomic_write_json
from ..weights import load_weights_or_explain
from .hooks import LayerwiseLRScheduler, StagedBackboneFreeze
from .metrics_writer import AtomicJSONWriter
from .optimizer import build_layerwise_optimizer
from .run_directory import STAGING_SUFFIX, replace_directory, staging_directory
from .train_loop import GradientAccumulationTrainer

logger = logging.getLogger(__name__)


def wrap_for_distributed(model):
    """detectron2's create_ddp_model, for CUDA and for CPU (gloo) models: detectron2 passes
    device_ids=[local rank] unconditionally, which DistributedDataParallel refuses for CPU."""
    on_cuda = next(model.parameters()).device.type == "cuda"
    return create_ddp_model(
        model, broadcast_buffers=False, device_ids=[comm.get_local_rank()] if on_cuda else None
    )


@contextlib.contextmanager
def _ddp_accepts_cpu_models():
    """While DefaultTrainer.__init__ runs, its module-level create_ddp_model wraps CPU models
    without device_ids (see wrap_for_distributed); it is put back afterwards."""
    original = detectron2_defaults.create_ddp_model
    detectron2_defaults.create_ddp_model = lambda model, **kwargs: wrap_for_distributed(model)
    try:
        yield
    finally:
        detectron2_defaults.create_ddp_model = original


def restart_data_stream(simple_trainer):
    """Make the next run_step draw from a new iterator over the trainer's data loader: upstream
    detectron2's public SimpleTrainer.reset_data_loader; v0.6 has none and keeps the iterator in
    `_data_loader_iter`, which upstream turned into a read-only property."""
    loader = simple_trainer.data_loader
    if hasattr(simple_trainer, "reset_data_loader"):
        simple_trainer.reset_data_loader(lambda: loader)
    else:
        simple_trainer._data_loader_iter = iter(loader)


class BestCheckpointerWithState(hooks.BestCheckpointer):
    """detectron2's BestCheckpointer whose best score and iteration are in the trainer's
    checkpoints, so `--resume` keeps comparing against them (v0.6's forgets them, and the first
    evaluation after a resume then overwrites model_best.pth, even with a worse model)."""

    def state_dict(self):
        return {"best_metric": self.best_metric, "best_iter": self.best_iter}

    def load_state_dict(self, state_dict):
        self.best_metric = state_dict.get("best_metric")
        self.best_iter = state_dict.get("best_iter")


class CityscapesFTTrainer(DefaultTrainer):
    """DefaultTrainer with the Cityscapes mapper, loader and evaluator, and the training recipe:

    - layer-wise LR and weight decay per parameter kind (`build_optimizer`);
    - staged backbone freezing (`StagedBackboneFreeze`);
    - gradient accumulation and AMP (`GradientAccumulationTrainer`);
    - exact resume: checkpoints keep the optimizer (and AMP grad scaler), which v0.6 drops, the
      data stream's position and the best checkpoint's score; the random generators of each step
      are seeded from (run seed, rank, iteration), so a resumed run draws what the uninterrupted
      one would have;
    - CPU distributed training (gloo).

    The config it gets is already resolved (engine.defaults.setup_cfg): the schedule is in
    iterations at the run's batch."""

    def __init__(self, cfg):
        check_schedule_resolved(cfg, comm.get_world_size())
        self.cfg = cfg  # the two setters below need it while DefaultTrainer.__init__ runs
        with _ddp_accepts_cpu_models():
            super().__init__(cfg)
        # The stream's seed (cfg.SEED, or one drawn for the run and kept in its checkpoints).
        self.run_seed = self.data_loader.seed

    # DefaultTrainer.__init__ builds a SimpleTrainer (AMPTrainer) and a DetectionCheckpointer and
    # has no method to override for either; these setters turn what it assigns into ours, with
    # the same model, data loader, optimizer, folder and checkpointables.
    @property
    def _trainer(self):
        return self.__dict__["_trainer"]

    @_trainer.setter
    def _trainer(self, inner):
        if not isinstance(inner, GradientAccumulationTrainer):
            inner = GradientAccumulationTrainer(
                inner.model, inner.data_loader, inner.optimizer,
                accumulation_steps=self.cfg.CITYSCAPES_FT.GRADIENT_ACCUMULATION_STEPS,
                amp=self.cfg.SOLVER.AMP.ENABLED,
            )
        self.__dict__["_trainer"] = inner

    @property
    def checkpointer(self):
        return self.__dict__["checkpointer"]

    @checkpointer.setter
    def checkpointer(self, checkpointer):
        if not isinstance(checkpointer, CityscapesFTCheckpointer):
            checkpointer = build_checkpointer(
                self.cfg, checkpointer.model, checkpointer.save_dir, **checkpointer.checkpointables
            )
        self.__dict__["checkpointer"] = checkpointer

    # Checkpoints hold the inner trainer's state (optimizer momentum, AMP grad scaler) and the
    # data stream's position and seed.
    def state_dict(self):
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        if hasattr(self.data_loader, "state_dict"):
            state["data"] = self.data_loader.state_dict()
        state["run_seed"] = self.run_seed
        return state

    def load_state_dict(self, state_dict):
        hook_states = state_dict.get("hooks", {})
        if "LRScheduler" in hook_states and "LayerwiseLRScheduler" not in hook_states:
            # A checkpoint of detectron2's own trainer: same scheduler state, its hook's name.
            hook_states["LayerwiseLRScheduler"] = hook_states.pop("LRScheduler")
        inner = state_dict.get("_trainer")
        if inner is None:
            logger.warning("Checkpoint has no optimizer state (made by plain detectron2 v0.6?): "
                           "resuming with fresh momentum")
        # Upstream detectron2's DefaultTrainer.load_state_dict reads state_dict["_trainer"]
        # unconditionally; the inner trainer's state is loaded here, leniently, instead.
        TrainerBase.load_state_dict(self, {k: v for k, v in state_dict.items() if k != "_trainer"})
        if inner is not None:
            try:
                self._trainer.load_state_dict(inner)
            except ValueError as e:  # parameter groups of another optimizer layout
                logger.warning(f"The checkpoint's optimizer state does not fit this optimizer ({e}): "
                               "resuming with fresh momentum")
        if "data" in state_dict and hasattr(self.data_loader, "load_state_dict"):
            self.data_loader.load_state_dict(state_dict["data"])
        else:
            logger.warning("Checkpoint has no data-stream position: the data order starts over")
        self.run_seed = state_dict.get("run_seed", self.run_seed)

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
            self.checkpointer.strict = False
            self.checkpointer.load(self.cfg.MODEL.WEIGHTS, checkpointables=[])
        # The stream restarts from the position that the checkpoint (if any) stored.
        restart_data_stream(self._trainer)
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
        checkpointer.strict = True
        for path in [tagged] + sorted(set(others) - {tagged}, key=iteration, reverse=True):
            if not os.path.isfile(path):
                logger.warning(f"last_checkpoint names {path}, which does not exist: skipping it")
                skipped.append(path)
                continue
            try:
                checkpointer.load(path)
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

    def rewrap_model_for_distributed(self):
        """Wrap the model in a new DistributedDataParallel, which takes the parameters that
        require a gradient now (DDP fixes that set when it wraps)."""
        old = self._trainer.model
        if not isinstance(old, DistributedDataParallel):
            return
        module = old.module
        self._trainer.model = None
        del old
        gc.collect()  # the old wrapper's reducer hooks must be gone before the next backward
        self._trainer.model = wrap_for_distributed(module)

    def seed_step(self):
        """Seed torch, numpy and python random generators from (run seed, rank, iteration)."""
        seed = derived_seed(self.run_seed, comm.get_rank(), self.iter)
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)

    def run_step(self):
        """One training step, its random generators seeded from (run seed, rank, iteration); a NaN
        or infinite loss ends the run naming the last good checkpoint."""
        self.seed_step()
        try:
            super().run_step()
        except FloatingPointError as e:  # SimpleTrainer's loss check, or the box head's
            last = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() else None
            previous = {
                k: round(v[0], 4) for k, v in self.storage.latest().items() if k.startswith("loss")
            }
            raise TrainingDiverged(
                f"Training stopped at iteration {self.iter}: the loss is NaN or infinite "
                f"({' '.join(line.strip() for line in str(e).splitlines())}); loss terms at the "
                f"iteration before: {previous or 'none logged yet'}. The last good checkpoint is "
                f"{last or '(none written yet)'}; resume from it with --resume after lowering "
                "SOLVER.BASE_LR, lengthening SOLVER.WARMUP_ITERS or enabling "
                "SOLVER.CLIP_GRADIENTS.ENABLED"
                + (f". Likely cause: {FROM_SCRATCH_FROZEN_BN}" if FROM_SCRATCH_FROZEN_BN in config_warnings(self.cfg, True) else "")
            ) from e

    def build_writers(self):
        """metrics.json (written atomically, resume-aware), the console and TensorBoard."""
        PathManager.mkdirs(self.cfg.OUTPUT_DIR)
        return [
            CommonMetricPrinter(self.max_iter),
            AtomicJSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
            TensorboardXWriter(self.cfg.OUTPUT_DIR),
        ]

    @classmethod
    def build_optimizer(cls, cfg, model):
        """SGD over layer-wise parameter groups (engine/optimizer.py), with detectron2's optional
        gradient clipping."""
        return build_layerwise_optimizer(cfg, model)

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
        ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))
        ret.append(hooks.PeriodicWriter([console], period=cfg.CITYSCAPES_FT.LOG_PERIOD))
        return ret

    def checkpoint_of_iteration(self, iteration):
        """The file the PeriodicCheckpointer writes for `iteration` (0-based), or None."""
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
        self._last_eval_results = self.test(self.cfg, self.model, iteration=done, checkpoint=checkpoint)
        return self._last_eval_results

    def _evaluate_with_TTA_after_training(self):
        checkpoint = self.checkpoint_of_iteration(self.max_iter - 1) if comm.is_main_process() else None
        return self.test_with_TTA(self.cfg, self.model, iteration=self.max_iter, checkpoint=checkpoint)

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
        """Official Cityscapes AP and COCO box/mask AP (CITYSCAPES_FT.EVAL_TASKS) into output_folder."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return CityscapesInstanceSegEvaluator(
            dataset_name, output_folder, tasks=cfg.CITYSCAPES_FT.EVAL_TASKS
        )

    @classmethod
    def test_with_TTA(cls, cfg, model, *, iteration=None, checkpoint=None):
        """Evaluate with test-time augmentation (TEST.AUG: the image at each of TEST.AUG.MIN_SIZES,
        and flipped with TEST.AUG.FLIP) through detectron2's GeneralizedRCNNWithTTA. As in
        detectron2's train_net.py, the outputs go to OUTPUT_DIR/inference_TTA/ and every result key
        ends in "_TTA"."""
        logger.info(f"Evaluating with test-time augmentation: short sides {tuple(cfg.TEST.AUG.MIN_SIZES)}, "
                    f"max size {cfg.TEST.AUG.MAX_SIZE}, flip {cfg.TEST.AUG.FLIP}")
        results = cls.test(cfg, GeneralizedRCNNWithTTA(cfg, model), iteration=iteration, checkpoint=checkpoint,
                           folder_suffix="_TTA")
        if len(cfg.DATASETS.TEST) == 1:
            return OrderedDict((k + "_TTA", v) for k, v in results.items())
        return OrderedDict((name, OrderedDict((k + "_TTA", v) for k, v in res.items())) for name, res in results.items())

    @classmethod
    def test(cls, cfg, model, evaluators=None, *, iteration=None, checkpoint=None, folder_suffix=""):
        """Evaluate on every cfg.DATASETS.TEST; print tables and write one JSON per dataset to
        OUTPUT_DIR/eval_results/. Returns results as DefaultTrainer.test does. folder_suffix names
        the outputs of a variant apart (OUTPUT_DIR/inference<suffix>/, <dataset><suffix>*.json)."""
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
                          "results": res}
                if staged:
                    atomic_write_json(os.path.join(staged, "results.json"), record)
                    replace_directory(staged, final)
                class_names = MetadataCatalog.get(dataset_name).thing_classes
                logger.info(
                    f"Evaluation of {dataset_name}{folder_suffix} (iteration {iteration}, weights {checkpoint}):\n"
                    + format_results_tables(res, class_names)
                )
                print_csv_format(res)
                stem = dataset_name + folder_suffix
                name = f"{stem}_iter{iteration:07d}.json" if iteration is not None else f"{stem}.json"
                path = os.path.join(cfg.OUTPUT_DIR, "eval_results", name)
                atomic_write_json(path, record)
                logger.info(f"Evaluation results written to {path}")
        if len(results) == 1:
            results = list(results.values())[0]
        return results


def build_trained_model(cfg):
    """cfg's model in eval mode with cfg.MODEL.WEIGHTS loaded exactly: a file that does not fit the
    config is refused naming the tensors (tools/make_submission.py, tools/export_model.py); no
    MODEL.WEIGHTS at all is refused too (the model would be untrained)."""
    if not cfg.MODEL.WEIGHTS:
        raise WeightsNotAvailable("MODEL.WEIGHTS is empty: pass the trained checkpoint, "
                                  "e.g. MODEL.WEIGHTS output/cs_ft/model_final.pth")
    model = CityscapesFTTrainer.build_model(cfg)
    checkpointer = build_checkpointer(cfg, model, strict=True)
    load_weights_or_explain(lambda: checkpointer.load(cfg.MODEL.WEIGHTS), cfg.MODEL.WEIGHTS)
    return model.eval()
