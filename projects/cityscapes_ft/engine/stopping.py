"""Hooks that end training before SOLVER.MAX_ITER: early stopping on the best-checkpoint metric,
and a sweep's pruning (the Optuna trial's pruner). Each decides after an evaluation, on the main
process (the only one with evaluation results), and every process takes the main one's decision,
so all stop after the same iteration; they ask the trainer to stop through its `request_stop`."""
import json
import logging
import os

from detectron2.engine import HookBase
from detectron2.utils import comm

from ..errors import ConfigNotRunnable
from ..utils import atomic_write_json
from .sweep.study import TrialReporter

logger = logging.getLogger(__name__)


class _AfterEvaluation(HookBase):
    """Runs `decide(value)` after each periodic evaluation (as detectron2's EvalHook schedules
    them), with `value` the evaluation's `metric` on the main process, and stops training if the
    main process's decision says so."""

    def __init__(self, eval_period, metric):
        self.eval_period = eval_period
        self.metric = metric

    def before_train(self):
        reason = self.stopped_reason()
        if reason:
            self.trainer.request_stop(reason)

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if self.eval_period <= 0 or next_iter % self.eval_period or next_iter == self.trainer.max_iter:
            return
        reason = None
        if comm.is_main_process():
            value, iteration = self.trainer.storage.latest().get(self.metric, (None, None))
            if value is None or iteration != self.trainer.iter:
                logger.warning(f"{type(self).__name__}: the evaluation at iteration {next_iter} has no "
                               f"'{self.metric}'; not deciding")
            else:
                reason = self.decide(float(value))
        reason = comm.all_gather(reason)[0]  # every process takes the main one's decision
        if reason:
            self.trainer.request_stop(reason)

    def stopped_reason(self):
        return None

    def decide(self, value):
        raise NotImplementedError


class EarlyStopping(_AfterEvaluation):
    """Stops when `metric` has not improved by more than `min_delta` over the best value so far
    for `patience` evaluations in a row. Its counters are in the checkpoints (`--resume` goes on
    counting; a run that had stopped stays stopped)."""

    def __init__(self, eval_period, metric, mode="max", patience=1, min_delta=0.0, best_checkpoint=None):
        super().__init__(eval_period, metric)
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
        self.mode = mode
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.best_checkpoint = best_checkpoint
        self.best = None  # the best value (any improvement: what model_best.pth holds)
        self.best_iteration = None
        self.reference = None  # the last value that improved by more than min_delta
        self.bad_evaluations = 0
        self.stopped_at = None

    def _improves(self, value):
        """By more than min_delta over the last value that did (as Keras counts patience)."""
        if self.reference is None:
            return True
        return (value > self.reference + self.min_delta if self.mode == "max"
                else value < self.reference - self.min_delta)

    def decide(self, value):
        done = self.trainer.iter + 1
        if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
            # any improvement, as the best checkpoint counts it: model_best.pth holds this one
            self.best, self.best_iteration = value, done
        if self._improves(value):
            self.reference, self.bad_evaluations = value, 0
            return None
        self.bad_evaluations += 1
        if self.bad_evaluations < self.patience:
            return None
        self.stopped_at = done
        return self.stopped_reason()

    def stopped_reason(self):
        if self.stopped_at is None:
            return None
        where = f"; the best model is {self.best_checkpoint}" if self.best_checkpoint else ""
        return (f"early stopping after iteration {self.stopped_at}: {self.metric} has not improved by more "
                f"than {self.min_delta} for {self.patience} evaluations (best {self.best:.5g} after "
                f"iteration {self.best_iteration}{where})")

    def after_train(self):
        if self.stopped_at is not None and comm.is_main_process():
            record = {"stopped_after_iteration": self.stopped_at, "metric": self.metric, "mode": self.mode,
                      "best": self.best, "best_iteration": self.best_iteration,
                      "best_checkpoint": self.best_checkpoint, "patience": self.patience,
                      "min_delta": self.min_delta}
            with open(os.path.join(self.trainer.cfg.OUTPUT_DIR, "early_stop.json"), "w") as f:
                json.dump(record, f, indent=1)

    def state_dict(self):
        return {"best": self.best, "best_iteration": self.best_iteration, "reference": self.reference,
                "bad_evaluations": self.bad_evaluations, "stopped_at": self.stopped_at}

    def load_state_dict(self, state):
        self.best = state.get("best")
        self.best_iteration = state.get("best_iteration")
        self.reference = state.get("reference", self.best)
        self.bad_evaluations = state.get("bad_evaluations", 0)
        self.stopped_at = state.get("stopped_at")


class SweepTrialPruning(_AfterEvaluation):
    """Reports each periodic evaluation's `metric` to the sweep's Optuna trial (the main process
    does; at step = iterations done) and stops the run when the study's pruner prunes the trial.
    The decision is in the checkpoints, and OUTPUT_DIR/pruned.json records it for the sweep."""

    def __init__(self, eval_period, metric, storage, study, trial_number):
        super().__init__(eval_period, metric)
        self.where = (storage, study, int(trial_number))
        self.trial = None
        self.pruned_at = None
        self.pruned_value = None

    def before_train(self):
        if comm.is_main_process():
            self.trial = TrialReporter(*self.where)
        super().before_train()

    def decide(self, value):
        done = self.trainer.iter + 1
        self.trial.report(value, done)
        if not self.trial.should_prune():
            return None
        self.pruned_at, self.pruned_value = done, value
        return self.stopped_reason()

    def stopped_reason(self):
        if self.pruned_at is None:
            return None
        return (f"sweep trial {self.where[2]} of study '{self.where[1]}' pruned after iteration "
                f"{self.pruned_at}: {self.metric} {self.pruned_value:.5g} trails the study's other trials")

    def after_train(self):
        if self.pruned_at is not None and comm.is_main_process():
            atomic_write_json(os.path.join(self.trainer.cfg.OUTPUT_DIR, "pruned.json"),
                              {"trial": self.where[2], "study": self.where[1], "pruned_after_iteration":
                               self.pruned_at, "metric": self.metric, "value": self.pruned_value})

    def state_dict(self):
        return {"pruned_at": self.pruned_at, "pruned_value": self.pruned_value}

    def load_state_dict(self, state):
        self.pruned_at = state.get("pruned_at")
        self.pruned_value = state.get("pruned_value")


def build_stopping_hooks(cfg):
    """EarlyStopping (CITYSCAPES_FT.EARLY_STOP.PATIENCE > 0) and a sweep trial's pruning
    (CITYSCAPES_FT.SWEEP.STORAGE set, with TEST.EVAL_PERIOD > 0), on every process."""
    ret = []
    metric, period = cfg.CITYSCAPES_FT.BEST_CHECKPOINT_METRIC, cfg.TEST.EVAL_PERIOD
    early = cfg.CITYSCAPES_FT.EARLY_STOP
    if early.PATIENCE > 0 and not (metric and period > 0):
        raise ConfigNotRunnable("CITYSCAPES_FT.EARLY_STOP.PATIENCE > 0 needs evaluations: set "
                                "TEST.EVAL_PERIOD > 0 and CITYSCAPES_FT.BEST_CHECKPOINT_METRIC")
    if early.PATIENCE > 0:
        best = os.path.join(cfg.OUTPUT_DIR, "model_best.pth")
        ret.append(EarlyStopping(period, metric, cfg.CITYSCAPES_FT.BEST_CHECKPOINT_MODE, early.PATIENCE,
                                 early.MIN_DELTA, best_checkpoint=best))
    sweep = cfg.CITYSCAPES_FT.SWEEP
    if sweep.STORAGE and metric and period > 0:
        ret.append(SweepTrialPruning(period, metric, sweep.STORAGE, sweep.STUDY, sweep.TRIAL))
    return ret
