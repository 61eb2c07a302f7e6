"""A sweep worker: runs trials of an Optuna study until the study has its N trials.

Each trial is one training run, through the same path as tools/train_net.py (engine.launch over
train_or_evaluate, so a trial can use --num-gpus), in SWEEP_DIR/trial_<n>, with the sampled values
as KEY VALUE overrides after the user's. Its training process reports every periodic evaluation to
the trial and stops when the study's pruner prunes it (engine/stopping.py, SweepTrialPruning); the
worker then tells the study the trial's result: the best value of BEST_CHECKPOINT_METRIC over its
evaluations (the model in its model_best.pth), pruned, or failed with the run's error.

Any number of workers share a study (one storage URL, one study name); trial numbers are given
out by the storage, and the trials numbered 0..N-1 are the sweep. A trial left RUNNING by a worker
that died (a kill, a lost machine) is resumed, not rerun: the next worker that can take its lock
(SWEEP_DIR/locks/trial_<n>.lock, held by the worker running it) continues the same Optuna trial
with --resume in its folder. The trainer's resume is exact, so the result is the uninterrupted
run's, the work done before the kill is kept, and the trial keeps its number and values (Optuna
cannot restart a finished trial: a rerun would leave a failed trial in the study and a new one).
"""
import fcntl
import json
import logging
import multiprocessing
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional

import yaml

from ...config import load_cityscapes_ft_cfg
from ...errors import ConfigNotRunnable, user_errors_as_messages
from ...utils import atomic_write_json, read_metrics
from ..defaults import argument_parser, train_or_evaluate
from ..launch import die_with_parent, launch
from .results import trial_dir, write_sweep_outputs
from .space import RESERVED_KEYS, RESERVED_PREFIXES, load_search_space
from .study import (DEFAULT_PRUNER, DEFAULT_SAMPLER, build_optuna_object, create_or_load_study, default_storage,
                    trial_of)

logger = logging.getLogger(__name__)
# How often a running trial's progress is printed.
PROGRESS_PERIOD_S = 30.0
SWEEP_RECORD = "sweep.json"


@dataclass
class SweepSettings:
    """What tools/sweep.py was given."""

    config_file: str
    space_file: str
    trials: int
    output: str
    storage: str = ""
    study: str = ""
    num_gpus: int = 1
    opts: List[str] = field(default_factory=list)
    sampler: str = DEFAULT_SAMPLER
    sampler_args: dict = field(default_factory=dict)
    pruner: str = DEFAULT_PRUNER
    pruner_args: dict = field(default_factory=dict)


class TrialLock:
    """SWEEP_DIR/locks/trial_<n>.lock, flock-ed by the worker running trial n. The kernel drops
    the lock of a dead process, so a RUNNING trial whose lock can be taken has lost its worker."""

    def __init__(self, path, handle):
        self.path, self._handle = path, handle

    @classmethod
    def create(cls, path):
        """Locked before it appears under its name: no other worker can see it free."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        staged = f"{path}.{os.getpid()}.new"
        handle = open(staged, "w")
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        json.dump({"host": socket.gethostname(), "pid": os.getpid()}, handle)
        handle.flush()
        os.replace(staged, path)
        return cls(path, handle)

    @classmethod
    def take_over(cls, path) -> Optional["TrialLock"]:
        """The lock of a trial whose worker died; None if it is held (or not on this file system)."""
        try:
            handle = open(path, "r+")
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        handle.seek(0)
        handle.truncate()
        json.dump({"host": socket.gethostname(), "pid": os.getpid()}, handle)
        handle.flush()
        return cls(path, handle)

    def release(self):
        if os.path.exists(self.path):
            os.unlink(self.path)
        self._handle.close()


def _trial_process(argv, console_path, parent_pid):
    """A trial's training run, as tools/train_net.py runs it; output to the trial's console.txt."""
    die_with_parent(parent_pid)  # a killed sweep worker does not leave its trial training on
    fd = os.open(console_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.argv = ["tools/train_net.py"] + list(argv)
    args = argument_parser().parse_args(argv)
    with user_errors_as_messages():
        launch(train_or_evaluate, args.num_gpus, dist_url=args.dist_url, args=(args,))


class SweepWorker:
    """One worker of a sweep (tools/sweep.py): checks everything, then runs trials until the study
    has its N trials, writing the sweep's outputs after each."""

    def __init__(self, settings: SweepSettings):
        import optuna

        s = self.settings = settings
        if s.trials < 1:
            raise ConfigNotRunnable(f"--trials must be at least 1, not {s.trials}")
        if len(s.opts) % 2:
            raise ConfigNotRunnable(f"KEY VALUE overrides come in pairs; '{s.opts[-1]}' has no value")
        for key in s.opts[0::2]:
            if key in RESERVED_KEYS or key.startswith(RESERVED_PREFIXES):
                raise ConfigNotRunnable(f"{key}: the sweep sets it for each trial (trials run in "
                                        f"{os.path.join(s.output, 'trial_<n>')}); leave it out")
        cfg = load_cityscapes_ft_cfg(s.config_file, s.opts)
        self.metric = cfg.CITYSCAPES_FT.BEST_CHECKPOINT_METRIC
        self.mode = cfg.CITYSCAPES_FT.BEST_CHECKPOINT_MODE
        if not self.metric:
            raise ConfigNotRunnable("CITYSCAPES_FT.BEST_CHECKPOINT_METRIC is empty: a sweep needs the metric "
                                    "to optimise (e.g. cityscapes/AP)")
        if cfg.TEST.EVAL_PERIOD <= 0 and cfg.CITYSCAPES_FT.SCHEDULE.EVAL_PERIOD_EPOCHS <= 0:
            logger.warning("TEST.EVAL_PERIOD is 0: trials are evaluated only at their end, so none can be "
                           "pruned")
        self.space = load_search_space(s.space_file, s.config_file, s.opts)
        os.makedirs(s.output, exist_ok=True)
        record = self._sweep_record()
        self.study_name = s.study or record.get("study") or os.path.basename(os.path.abspath(s.output))
        if record and record["study"] != self.study_name:
            raise ConfigNotRunnable(f"{s.output} holds the trials of study '{record['study']}'; pass --study "
                                    f"{record['study']} to continue it, or another --output")
        self.storage_url = s.storage or record.get("storage") or default_storage(s.output)
        sampler = build_optuna_object(optuna.samplers, s.sampler, s.sampler_args, "--sampler")
        objective = {"metric": self.metric, "mode": self.mode}
        self.study = create_or_load_study(self.storage_url, self.study_name,
                                          "maximize" if self.mode == "max" else "minimize", objective,
                                          {"name": s.pruner, "args": s.pruner_args}, sampler)
        if not record:
            atomic_write_json(os.path.join(s.output, SWEEP_RECORD), {
                "study": self.study_name, "storage": self.storage_url, "config_file": s.config_file,
                "space": s.space_file, "overrides": s.opts, "trials": s.trials})
        self.durations = []

    def _sweep_record(self):
        path = os.path.join(self.settings.output, SWEEP_RECORD)
        if not os.path.isfile(path):
            return {}
        with open(path) as f:
            return json.load(f)

    # ---- the loop ------------------------------------------------------------------------------
    def run(self):
        """Trials until trials 0..N-1 have all been started (and ours finished); returns the study."""
        import optuna

        n = self.settings.trials
        logger.info(f"Sweep '{self.study_name}' in {self.storage_url}: {n} trials of {self.settings.config_file} "
                    f"over {', '.join(self.space.distributions)}; {self.metric} ({self.mode}), "
                    f"pruner {self.study.pruner.__class__.__name__}")
        try:
            while True:
                claimed = self._claim_interrupted_trial()
                if claimed is not None:
                    number, params, lock = claimed
                    resume = True
                    logger.info(f"Trial {number} was interrupted (its worker is gone): resuming it in "
                                f"{trial_dir(self.settings.output, number)} with --resume")
                else:
                    if self._count(lambda t: t.number < n) >= n:
                        break
                    trial = self.study.ask(self.space.distributions)
                    number, params, resume = trial.number, trial.params, False
                    if number >= n:  # another worker took the last one meanwhile
                        trial.set_user_attr("not_run", f"the sweep had its {n} trials already")
                        self.study.tell(number, state=optuna.trial.TrialState.FAIL)
                        break
                    lock = TrialLock.create(self._lock_path(number))
                try:
                    self._run_trial(number, params, resume)
                finally:
                    lock.release()
                write_sweep_outputs(self.study, self.settings.output, self.metric, self.mode, n)
        finally:
            write_sweep_outputs(self.study, self.settings.output, self.metric, self.mode, n)
        self._log_summary()
        return self.study

    def _lock_path(self, number):
        return os.path.join(self.settings.output, "locks", f"trial_{number}.lock")

    def _trials(self, states=None):
        return self.study.get_trials(deepcopy=False, states=states)

    def _count(self, condition):
        return sum(1 for t in self._trials() if condition(t))

    def _claim_interrupted_trial(self):
        """(number, params, lock) of a RUNNING trial whose worker died, now ours; else None."""
        import optuna

        running = optuna.trial.TrialState.RUNNING
        for trial in self._trials(states=(running,)):
            if trial.number >= self.settings.trials:
                continue
            lock = TrialLock.take_over(self._lock_path(trial.number))
            if lock is None:
                continue
            current = [t for t in self._trials(states=(running,)) if t.number == trial.number]
            if current:  # still unfinished once locked: not finished by a worker that just let go
                return trial.number, current[0].params, lock
            lock.release()
        return None

    # ---- one trial -----------------------------------------------------------------------------
    def _run_trial(self, number, params, resume):
        s = self.settings
        out = trial_dir(s.output, number)
        os.makedirs(out, exist_ok=True)
        argv = ["--config-file", s.config_file, "--num-gpus", str(s.num_gpus), "--dist-url", "auto"]
        argv += ["--resume"] if resume else []
        argv += list(s.opts) + self.space.overrides(params) + [
            "OUTPUT_DIR", out, "CITYSCAPES_FT.SWEEP.STORAGE", self.storage_url,
            "CITYSCAPES_FT.SWEEP.STUDY", self.study_name, "CITYSCAPES_FT.SWEEP.TRIAL", str(number)]
        trial = trial_of(self.study, number)
        trial.set_user_attr("output_dir", out)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("command", "tools/train_net.py " + " ".join(argv))
        finished = self._count(lambda t: t.state.is_finished() and t.number < s.trials)
        logger.info(f"Trial {number} ({finished} of {s.trials} finished): "
                    + ", ".join(f"{k} {v!r}" for k, v in params.items()) + f" -> {out}")
        started = time.time()
        proc = multiprocessing.get_context("spawn").Process(
            target=_trial_process, args=(argv, os.path.join(out, "console.txt"), os.getpid()))
        proc.start()
        progress = _Progress(out)
        while proc.is_alive():
            proc.join(timeout=min(5.0, PROGRESS_PERIOD_S))
            if proc.is_alive() and progress.due():
                logger.info(f"Trial {number}: {progress.line()}" + self._sweep_eta(progress))
        self.durations.append(time.time() - started)
        self._tell(number, out, proc.exitcode, time.time() - started)

    def _sweep_eta(self, progress):
        left = progress.eta_s()
        if left is None or not self.durations:
            return ""
        n = self.settings.trials
        unstarted = max(0, n - self._count(lambda t: t.number < n))
        workers = max(1, self._count(lambda t: t.state.name == "RUNNING"))
        total = left + unstarted * (sum(self.durations) / len(self.durations)) / workers
        return f"; sweep ETA {_hms(total)} ({unstarted} trials not started)"

    def _tell(self, number, out, exitcode, seconds):
        import optuna

        states = optuna.trial.TrialState
        trial = trial_of(self.study, number)
        trial.set_user_attr("seconds", round(seconds, 1))
        pruned = _read_json(os.path.join(out, "pruned.json"))
        values = [(r["iteration"] + 1, float(r[self.metric])) for r in read_metrics(os.path.join(out, "metrics.json"))
                  if self.metric in r]
        if exitcode == 0 and pruned:
            trial.set_user_attr("pruned_after_iteration", pruned["pruned_after_iteration"])
            self.study.tell(number, state=states.PRUNED)
            logger.info(f"Trial {number} pruned after iteration {pruned['pruned_after_iteration']} "
                        f"({self.metric} {pruned['value']:.5g}) in {_hms(seconds)}")
        elif exitcode == 0 and values:
            pick = max if self.mode == "max" else min
            iteration, value = pick(values, key=lambda v: v[1])
            trial.set_user_attr("best_iteration", iteration)
            trial.set_user_attr("last_value", values[-1][1])
            self.study.tell(number, value)
            logger.info(f"Trial {number} done in {_hms(seconds)}: {self.metric} {value:.5g} (after iteration "
                        f"{iteration}); best so far: trial {self.study.best_trial.number}, "
                        f"{self.study.best_value:.5g}")
        else:
            error = (f"no evaluation gave {self.metric}" if exitcode == 0
                     else _last_error(os.path.join(out, "console.txt"), exitcode))
            trial.set_user_attr("error", error)
            self.study.tell(number, state=states.FAIL)
            logger.warning(f"Trial {number} failed: {error} (its output: {os.path.join(out, 'console.txt')})")

    def _log_summary(self):
        n = self.settings.trials
        ours = [t for t in self._trials() if t.number < n]
        counts = {}
        for t in ours:
            counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
        running = [t.number for t in ours if not t.state.is_finished()]
        what = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        logger.info(f"Sweep '{self.study_name}': {len(ours)} of {n} trials ({what})"
                    + (f"; trials {running} are still running in other workers" if running else "")
                    + f". Outputs in {self.settings.output}: trials.csv, sweep.html"
                    + (", best_config.yaml" if any(t.state.name == "COMPLETE" for t in ours) else ""))


class _Progress:
    """A running trial's iteration and ETA, read from its metrics.json and config.yaml."""

    def __init__(self, out):
        self.out = out
        self.first = None  # (time, iterations done) when progress was first seen
        self.last_print = time.time()
        self.done = 0
        self.max_iter = None

    def due(self):
        if time.time() - self.last_print < PROGRESS_PERIOD_S:
            return False
        self.last_print = time.time()
        records = read_metrics(os.path.join(self.out, "metrics.json"))
        if self.max_iter is None and os.path.isfile(os.path.join(self.out, "config.yaml")):
            with open(os.path.join(self.out, "config.yaml")) as f:
                self.max_iter = yaml.safe_load(f)["SOLVER"]["MAX_ITER"]
        self.done = records[-1]["iteration"] + 1 if records else 0
        if self.max_iter:  # the record of the evaluation after training is one past the end
            self.done = min(self.done, self.max_iter)
        if self.first is None and self.done:
            self.first = (time.time(), self.done)
        return True

    def eta_s(self):
        if self.first is None or not self.max_iter or self.done <= self.first[1]:
            return None
        rate = (self.done - self.first[1]) / (time.time() - self.first[0])
        return (self.max_iter - self.done) / rate

    def line(self):
        if not self.done:
            return "starting (building the model, loading data)"
        eta = self.eta_s()
        return (f"iteration {self.done}/{self.max_iter or '?'}"
                + (f", trial ETA {_hms(eta)}" if eta is not None else ""))


def _hms(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _last_error(console_path, exitcode):
    """The run's own one-line error (user_errors_as_messages prints 'error: ...'), else its last line."""
    try:
        with open(console_path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        lines = []
    errors = [line for line in lines if line.startswith("error")]
    return (errors[-1] if errors else (lines[-1] if lines else "no output"))[:500] + f" (exit status {exitcode})"
