"""The cityscapes-ft trainer: detectron2's DefaultTrainer with our mapper, evaluator and fixes."""
import gc
import logging
import os
import random
import weakref
from collections import OrderedDict

import numpy as np
import torch
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.build import filter_images_with_only_crowd_annotations, print_instances_class_histogram
from detectron2.engine import DefaultTrainer, TrainerBase, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, TensorboardXWriter
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import build_checkpointer
from ..data import EVALUATOR_TYPE, build_mapper, cityscapes_root, load_cityscapes_ft_instances
from ..data.resumable_loader import ResumableTrainLoader, derived_seed
from ..errors import ConfigNotRunnable, TrainingDiverged
from ..evaluation import CityscapesInstanceSegEvaluator, format_results_tables
from ..utils import atomic_write_json
from .hooks import LayerwiseLRScheduler, StagedBackboneFreeze
from .metrics_writer import AtomicJSONWriter
from .optimizer import build_layerwise_optimizer
from .schedule import per_process_batch, resolve_training_schedule
from .train_loop import GradientAccumulationTrainer

logger = logging.getLogger(__name__)


def wrap_for_distributed(model):
    """DistributedDataParallel for CUDA and for CPU (gloo) models; the model itself alone."""
    if comm.get_world_size() == 1:
        return model
    on_cuda = next(model.parameters()).device.type == "cuda"
    return DistributedDataParallel(
        model,
        device_ids=[comm.get_local_rank()] if on_cuda else None,
        broadcast_buffers=False,
    )


def load_train_dicts_skipping_bad(cfg):
    """DATASETS.TRAIN as detectron2's loader builds it, but with bad Cityscapes samples left out
    (and logged) instead of stopping the run."""
    dicts = []
    for name in cfg.DATASETS.TRAIN:
        meta = MetadataCatalog.get(name)
        if meta.get("evaluator_type") != EVALUATOR_TYPE:
            dicts.extend(DatasetCatalog.get(name))
            continue
        root = meta.get("dataset_root") or cityscapes_root()
        dicts.extend(load_cityscapes_ft_instances(root, meta.split, on_bad_sample="skip"))
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        dicts = filter_images_with_only_crowd_annotations(dicts)
    print_instances_class_histogram(dicts, MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).thing_classes)
    return dicts


class CityscapesFTTrainer(DefaultTrainer):
    """DefaultTrainer with the Cityscapes mapper and evaluator, and the training recipe:

    - the schedule in epochs or iterations, rescaled to the run's global batch, logged at start
      and written to OUTPUT_DIR/schedule.json (`resolve_training_schedule`);
    - layer-wise LR and weight decay per parameter kind (`build_layerwise_optimizer`);
    - staged backbone freezing (`StagedBackboneFreeze`);
    - gradient accumulation and AMP (`GradientAccumulationTrainer`);
    - exact resume: checkpoints keep the optimizer (and AMP grad scaler), which v0.6 drops, and
      the data stream's position; the random generators of each step are seeded from (run seed,
      rank, iteration), so a resumed run draws what the uninterrupted one would have;
    - CPU distributed training (gloo)."""

    def __init__(self, cfg):
        # Same construction as DefaultTrainer.__init__, with the schedule resolved first and DDP
        # also wrapping CPU models (v0.6 passes device_ids for CPU models, which DDP rejects).
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        # Loaded once: their number sets an epoch-based schedule, and the loader samples them.
        train_dicts = self.build_train_dataset_dicts(cfg)
        cfg, self.schedule = resolve_training_schedule(cfg, comm.get_world_size(), len(train_dicts))
        logger.info(self.schedule.format())
        if comm.is_main_process() and cfg.OUTPUT_DIR:
            atomic_write_json(os.path.join(cfg.OUTPUT_DIR, "schedule.json"), self.schedule.as_dict())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg, dataset_dicts=train_dicts)
        model = wrap_for_distributed(model)
        self._trainer = GradientAccumulationTrainer(
            model, data_loader, optimizer,
            accumulation_steps=cfg.CITYSCAPES_FT.GRADIENT_ACCUMULATION_STEPS,
            amp=cfg.SOLVER.AMP.ENABLED,
        )
        # The stream's seed (cfg.SEED, or one drawn for the run and kept in its checkpoints).
        self.run_seed = data_loader.seed
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = build_checkpointer(cfg, model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

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
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            try:
                self._trainer.load_state_dict(state_dict["_trainer"])
            except ValueError as e:  # parameter groups of another optimizer layout
                logger.warning(f"The checkpoint's optimizer state does not fit this optimizer ({e}): "
                               "resuming with fresh momentum")
        else:
            logger.warning("Checkpoint has no optimizer state (made by plain detectron2 v0.6?): "
                           "resuming with fresh momentum")
        if "data" in state_dict and hasattr(self.data_loader, "load_state_dict"):
            self.data_loader.load_state_dict(state_dict["data"])
        else:
            logger.warning("Checkpoint has no data-stream position: the data order starts over")
        self.run_seed = state_dict.get("run_seed", self.run_seed)

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        # The stream restarts from the position that the checkpoint (if any) stored.
        self._trainer._data_loader_iter = iter(self._trainer.data_loader)

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
            ) from e

    def build_writers(self):
        PathManager.mkdirs(self.cfg.OUTPUT_DIR)
        return [
            CommonMetricPrinter(self.max_iter),
            AtomicJSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
            TensorboardXWriter(self.cfg.OUTPUT_DIR),
        ]

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_layerwise_optimizer(cfg, model)

    def build_hooks(self):
        ret = super().build_hooks()
        for i, hook in enumerate(ret):
            if type(hook) is hooks.LRScheduler:
                ret[i] = LayerwiseLRScheduler()
                freeze = self.cfg.CITYSCAPES_FT.BACKBONE_FREEZE
                if freeze.ITERS > 0:
                    ret.insert(i, StagedBackboneFreeze(freeze.ITERS, include_fpn=freeze.INCLUDE_FPN))
                break
        for i, hook in enumerate(ret):
            if isinstance(hook, hooks.PeriodicWriter):  # detectron2 writes all every 20 iterations
                console = [w for w in hook._writers if isinstance(w, CommonMetricPrinter)]
                files = [w for w in hook._writers if not isinstance(w, CommonMetricPrinter)]
                ret[i:i + 1] = [
                    hooks.PeriodicWriter(files, period=self.cfg.CITYSCAPES_FT.METRICS_PERIOD),
                    hooks.PeriodicWriter(console, period=self.cfg.CITYSCAPES_FT.LOG_PERIOD),
                ]
                break
        # Evaluation that also records which iteration and checkpoint it measured.
        for i, hook in enumerate(ret):
            if isinstance(hook, hooks.EvalHook):
                ret[i] = hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, self._evaluate_during_training)
                metric = self.cfg.CITYSCAPES_FT.BEST_CHECKPOINT_METRIC
                if metric and self.cfg.TEST.EVAL_PERIOD > 0 and comm.is_main_process():
                    # After the evaluation it compares, so the metric is already in the storage.
                    best = build_checkpointer(self.cfg, self.model, self.cfg.OUTPUT_DIR, tag_last=False,
                                              trainer=weakref.proxy(self))
                    ret.insert(i + 1, hooks.BestCheckpointer(
                        self.cfg.TEST.EVAL_PERIOD, best, metric,
                        mode=self.cfg.CITYSCAPES_FT.BEST_CHECKPOINT_MODE,
                    ))
                break
        return ret

    def _evaluate_during_training(self):
        checkpoint = self.checkpointer.get_checkpoint_file() if comm.is_main_process() else None
        # Iterations done: self.iter is the current one in after_step, max_iter in after_train.
        done = min(self.iter + 1, self.max_iter)
        self._last_eval_results = self.test(self.cfg, self.model, iteration=done, checkpoint=checkpoint)
        return self._last_eval_results

    @classmethod
    def build_train_dataset_dicts(cls, cfg):
        """DATASETS.TRAIN as the training loader sees it: after FILTER_EMPTY_ANNOTATIONS, and
        without bad samples when CITYSCAPES_FT.ON_BAD_SAMPLE is "skip"."""
        if cfg.CITYSCAPES_FT.ON_BAD_SAMPLE == "error":
            return get_detection_dataset_dicts(
                cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
            )
        return load_train_dicts_skipping_bad(cfg)

    @classmethod
    def build_train_loader(cls, cfg, dataset_dicts=None):
        """A ResumableTrainLoader over dataset_dicts (default: build_train_dataset_dicts(cfg)):
        this process's share of SOLVER.IMS_PER_BATCH / accumulation steps per batch, aspect-ratio
        grouped, resumable at the batch where a checkpoint stopped."""
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            raise ConfigNotRunnable(
                f"DATALOADER.SAMPLER_TRAIN is '{cfg.DATALOADER.SAMPLER_TRAIN}'; cityscapes-ft's "
                "resumable training loader samples like 'TrainingSampler' (uniform, shuffled) only"
            )
        world = comm.get_world_size()
        batch_size = per_process_batch(
            cfg.SOLVER.IMS_PER_BATCH, world, cfg.CITYSCAPES_FT.GRADIENT_ACCUMULATION_STEPS
        )
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        return ResumableTrainLoader(
            cls.build_train_dataset_dicts(cfg) if dataset_dicts is None else dataset_dicts,
            build_mapper(cfg, is_train=True),
            batch_size=batch_size, seed=seed, rank=comm.get_rank(),
            world_size=world, aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=build_mapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return CityscapesInstanceSegEvaluator(
            dataset_name, output_folder, tasks=cfg.CITYSCAPES_FT.EVAL_TASKS
        )

    @classmethod
    def test(cls, cfg, model, evaluators=None, *, iteration=None, checkpoint=None):
        """Evaluate on every cfg.DATASETS.TEST; print tables and write one JSON per dataset to
        OUTPUT_DIR/eval_results/. Returns results as DefaultTrainer.test does."""
        if evaluators is not None and len(evaluators) != len(cfg.DATASETS.TEST):
            raise ValueError(f"{len(evaluators)} evaluators for {len(cfg.DATASETS.TEST)} test datasets")
        results = OrderedDict()
        for idx, dataset_name in enumerate(cfg.DATASETS.TEST):
            loader = cls.build_test_loader(cfg, dataset_name)
            evaluator = evaluators[idx] if evaluators else cls.build_evaluator(cfg, dataset_name)
            res = inference_on_dataset(model, loader, evaluator)
            results[dataset_name] = res
            if comm.is_main_process():
                class_names = MetadataCatalog.get(dataset_name).thing_classes
                logger.info(
                    f"Evaluation of {dataset_name} (iteration {iteration}, weights {checkpoint}):\n"
                    + format_results_tables(res, class_names)
                )
                print_csv_format(res)
                name = f"{dataset_name}_iter{iteration:07d}.json" if iteration is not None else f"{dataset_name}.json"
                path = os.path.join(cfg.OUTPUT_DIR, "eval_results", name)
                atomic_write_json(
                    path,
                    {"dataset": dataset_name, "iteration": iteration, "checkpoint": checkpoint,
                     "results": res},
                )
                logger.info(f"Evaluation results written to {path}")
        if len(results) == 1:
            results = list(results.values())[0]
        return results
