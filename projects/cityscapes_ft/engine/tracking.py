"""Experiment tracking as detectron2 event writers: MLflow and Weights & Biases.

Each tracker is an EventWriter (built by the trainer's `build_writers` from
CITYSCAPES_FT.WRITERS) that hands what it sends to a background thread, so a slow or vanished
tracking server never stops or slows training: the first failure is one warning naming the
server, later records are counted, and the count is logged when the run ends (metrics.json and
the checkpoints have everything). The `TrackingRun` hook keeps each tracker's run id in the
checkpoints, so `--resume` continues the same run; a small file per tracker
(OUTPUT_DIR/tracking/<name>.json) records the last iteration the server took, so a resumed run
does not send an iteration twice.
"""
import json
import logging
import math
import os
import queue
import re
import sys
import threading
import time
import uuid

from detectron2.engine import HookBase
from detectron2.utils.events import EventWriter, get_event_storage

from ..config import flat_config_items
from ..errors import ConfigNotRunnable
from ..utils import atomic_write_json

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "cityscapes-ft"
# How long the end of a run waits for the background sender before reporting what is left.
FLUSH_TIMEOUT_S = 60.0
# Files of the run sent as artifacts at its end (eval_results/*.json as well).
RUN_ARTIFACTS = ("config.yaml", "report.html", "training_curves.png", "metrics.json")


class TrackingWriter(EventWriter):
    """The scalars of every iteration (losses, LR per part, `backbone_frozen`, evaluation results at
    their iteration) sent to a tracking service from a background thread. Subclasses say how:
    `_open`, `_send_metrics`, `_send_files`, `_close`."""

    name = ""

    def __init__(self, cfg):
        self.output_dir = cfg.OUTPUT_DIR
        self.params = dict(flat_config_items(cfg))
        self.experiment = cfg.CITYSCAPES_FT.TRACKING_EXPERIMENT
        self.run_id = None
        self.error = None  # the first failure; nothing is sent after it
        self.unsent_iterations = set()
        self.unsent_files = []
        self._taken = -1  # the last iteration taken from the event storage
        self._already_sent = -1  # the last iteration a previous part of this run sent
        self._queue = queue.Queue()
        self._thread = None
        self._finished = False

    @property
    def where(self) -> str:
        """The server or folder the tracker writes to, in words."""
        return self.name

    # ---- called by the training thread -------------------------------------------------------
    def start(self):
        """Opens (or, with a run id from a checkpoint, continues) the run, in the background."""
        state = self._state_file_content()
        if self.run_id is not None and state.get("run_id") == self.run_id:
            self._already_sent = state.get("last_iteration", -1)
        self._thread = threading.Thread(target=self._work, name=f"{self.name}-tracking", daemon=True)
        self._thread.start()
        self._queue.put(("open", None))

    def write(self):
        """Queues the scalars of the iterations not taken yet."""
        if self._thread is None:
            return
        storage = get_event_storage()
        new = {}
        for key, (value, iteration) in storage.latest().items():
            if iteration > self._taken and iteration > self._already_sent:
                value = float(value)
                if math.isfinite(value):
                    new.setdefault(iteration, {})[key] = value
        if new:
            self._taken = max(new)
            self._queue.put(("metrics", dict(sorted(new.items()))))

    def close(self):
        """Waits (at most FLUSH_TIMEOUT_S) until what was queued has been sent or given up."""
        self._wait()

    def finish(self, failed=False):
        """Sends the run's files (RUN_ARTIFACTS, eval_results/*.json), ends the run and logs what
        could not be sent. Once."""
        if self._thread is None or self._finished:
            return
        self._finished = True
        files = [os.path.join(self.output_dir, f) for f in RUN_ARTIFACTS]
        results = os.path.join(self.output_dir, "eval_results")
        if os.path.isdir(results):
            files += [os.path.join(results, f) for f in sorted(os.listdir(results)) if f.endswith(".json")]
        self._queue.put(("files", [f for f in files if os.path.isfile(f)]))
        self._queue.put(("close", failed))
        self._queue.put(None)
        self._wait()
        if self._thread.is_alive():
            logger.warning(f"{self.name}: {self.where} did not take everything within {FLUSH_TIMEOUT_S:.0f} s")
        if self.unsent_iterations or self.unsent_files:
            its = sorted(self.unsent_iterations)
            span = f"{len(its)} iterations ({its[0]}..{its[-1]})" if its else "no metrics"
            logger.warning(
                f"{self.name}: could not send {span} and {len(self.unsent_files)} files to "
                f"{self.where} ({self.error}); metrics.json and {self.output_dir} have them all"
            )
        elif self.error is None:
            logger.info(f"{self.name}: run {self.run_id} complete in {self.where}")

    def state_dict(self):
        return {"run_id": self.run_id}

    def load_state_dict(self, state):
        self.run_id = state.get("run_id")

    # ---- the background thread ---------------------------------------------------------------
    def _wait(self):
        deadline = time.time() + FLUSH_TIMEOUT_S
        while self._thread is not None and self._thread.is_alive() and self._queue.unfinished_tasks:
            if time.time() > deadline:
                return
            time.sleep(0.05)

    def _work(self):
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._handle(*item)
            finally:
                self._queue.task_done()

    def _handle(self, kind, payload):
        if self.error is not None:
            return self._count_unsent(kind, payload)
        try:
            if kind == "open":
                self._open()
            elif kind == "metrics":
                self._send_metrics(payload)
                self._save_state(max(payload))
            elif kind == "files":
                self._send_files(payload)
            elif kind == "close":
                self._close(payload)
        except Exception as e:  # any failure of the service: training goes on without it
            self.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            logger.warning(
                f"{self.name}: {self.where} cannot be reached or refused a request ({self.error}); "
                "training goes on without it, metrics.json and checkpoints as always; what is not "
                "sent is counted and reported at the end"
            )
            self._count_unsent(kind, payload)

    def _count_unsent(self, kind, payload):
        if kind == "metrics":
            self.unsent_iterations.update(payload)
        elif kind == "files":
            self.unsent_files.extend(payload)

    def _state_path(self):
        return os.path.join(self.output_dir, "tracking", f"{self.name}.json")

    def _state_file_content(self):
        try:
            with open(self._state_path()) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _save_state(self, last_iteration):
        atomic_write_json(self._state_path(), {"run_id": self.run_id, "last_iteration": last_iteration})

    # ---- what a service implements -----------------------------------------------------------
    def _open(self):
        raise NotImplementedError

    def _send_metrics(self, metrics_by_iteration):
        raise NotImplementedError

    def _send_files(self, paths):
        raise NotImplementedError

    def _close(self, failed):
        raise NotImplementedError


def _experiment_name(configured, env_key):
    return configured or os.environ.get(env_key) or DEFAULT_EXPERIMENT


class MLflowWriter(TrackingWriter):
    """An MLflow run in MLFLOW_TRACKING_URI (MLflow's default when unset), in the experiment
    CITYSCAPES_FT.TRACKING_EXPERIMENT (else MLFLOW_EXPERIMENT_NAME, else "cityscapes-ft"); the
    resolved config as params, each scalar as a metric at its iteration, the run's files as
    artifacts."""

    name = "mlflow"

    def __init__(self, cfg):
        super().__init__(cfg)
        import mlflow  # noqa: F401  (a missing package fails when the run is built)

        # Give up on an unreachable server after a few seconds instead of MLflow's minutes of
        # retries (the user's settings win).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.experiment = _experiment_name(self.experiment, "MLFLOW_EXPERIMENT_NAME")
        self.client = None

    @property
    def where(self):
        import mlflow

        return f"MLflow tracking server {mlflow.get_tracking_uri()}"

    def _open(self):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            logger.info(f"mlflow: continuing run {self.run_id} in {self.where}")
            return
        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is None:
            try:
                experiment_id = self.client.create_experiment(self.experiment)
            except Exception:  # another process made it meanwhile
                experiment_id = self.client.get_experiment_by_name(self.experiment).experiment_id
        else:
            experiment_id = experiment.experiment_id
        run = self.client.create_run(experiment_id, run_name=os.path.basename(os.path.abspath(self.output_dir)),
                                     tags={"output_dir": os.path.abspath(self.output_dir)})
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in self.params.items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        logger.info(f"mlflow: run {self.run_id} in experiment '{self.experiment}' of {self.where}")

    def _send_metrics(self, metrics_by_iteration):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_mlflow_key(k), v, now, iteration)
                   for iteration, scalars in metrics_by_iteration.items() for k, v in scalars.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def _send_files(self, paths):
        for path in paths:
            folder = os.path.relpath(os.path.dirname(path), self.output_dir)
            self.client.log_artifact(self.run_id, path, artifact_path=None if folder == "." else folder)

    def _close(self, failed):
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def _mlflow_key(key):
    # MLflow keys: letters, digits, "_", "-", ".", " ", "/"; ours are those already, but be safe.
    return re.sub(r"[^\w\-. /]", "_", key)


class WandbWriter(TrackingWriter):
    """A W&B run, offline unless WANDB_MODE says otherwise (its files under OUTPUT_DIR/wandb/;
    `wandb sync` uploads them), in the project CITYSCAPES_FT.TRACKING_EXPERIMENT (else
    WANDB_PROJECT, else "cityscapes-ft"); the same content as MLflowWriter."""

    name = "wandb"

    def __init__(self, cfg):
        super().__init__(cfg)
        import wandb  # noqa: F401

        self.experiment = _experiment_name(self.experiment, "WANDB_PROJECT")
        self.mode = os.environ.get("WANDB_MODE", "offline")
        self.run = None

    @property
    def where(self):
        return f"W&B ({self.mode}, {os.path.join(self.output_dir, 'wandb')})"

    def _open(self):
        import wandb

        resumed = self.run_id is not None
        self.run_id = self.run_id or uuid.uuid4().hex[:12]
        self.run = wandb.init(
            project=self.experiment, id=self.run_id, name=os.path.basename(os.path.abspath(self.output_dir)),
            dir=self.output_dir, mode=self.mode, resume="allow", config=self.params,
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )
        logger.info(f"wandb: {'continuing' if resumed else 'started'} run {self.run_id} ({self.mode}) "
                    f"in {self.run.dir}")

    def _send_metrics(self, metrics_by_iteration):
        for iteration, scalars in metrics_by_iteration.items():
            self.run.log(scalars, step=iteration)

    def _send_files(self, paths):
        for path in paths:
            # Under the run folder's name: files/config.yaml is W&B's own.
            self.run.save(path, base_path=os.path.dirname(os.path.abspath(self.output_dir)), policy="now")

    def _close(self, failed):
        self.run.finish(exit_code=1 if failed else 0)


TRACKING_WRITERS = {"mlflow": MLflowWriter, "wandb": WandbWriter}


def build_tracking_writers(cfg):
    """The trackers CITYSCAPES_FT.WRITERS names (not "tensorboard", which the trainer builds)."""
    unknown = [n for n in cfg.CITYSCAPES_FT.WRITERS if n not in TRACKING_WRITERS and n != "tensorboard"]
    if unknown:
        raise ConfigNotRunnable(f"CITYSCAPES_FT.WRITERS: unknown writer(s) {unknown}; choose from "
                                f"{['tensorboard'] + sorted(TRACKING_WRITERS)}")
    return [TRACKING_WRITERS[name](cfg) for name in cfg.CITYSCAPES_FT.WRITERS if name in TRACKING_WRITERS]


class TrackingRun(HookBase):
    """Starts the trackers once a checkpoint is loaded (continuing its runs), keeps their run ids
    in the checkpoints, and ends their runs: failed if training raised, otherwise when
    `finish_tracking` is called after the run's report is written."""

    def __init__(self, writers):
        self.writers = [w for w in writers if isinstance(w, TrackingWriter)]

    def before_train(self):
        for writer in self.writers:
            writer.start()

    def after_train(self):
        # Inside TrainerBase.train's `finally`: an exception on its way out is training's.
        if sys.exc_info()[0] is not None:
            for writer in self.writers:
                writer.finish(failed=True)

    def finish(self):
        for writer in self.writers:
            writer.finish()

    def state_dict(self):
        return {w.name: w.state_dict() for w in self.writers}

    def load_state_dict(self, state_dict):
        for writer in self.writers:
            if writer.name in state_dict:
                writer.load_state_dict(state_dict[writer.name])


def finish_tracking(trainer):
    """Ends the trainer's tracked runs (after the report, so it goes along); no-op without any."""
    if getattr(trainer, "tracking", None) is not None:
        trainer.tracking.finish()
