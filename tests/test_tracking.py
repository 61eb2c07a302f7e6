"""MLflow and W&B writers (engine/tracking.py) against a real MLflow tracking server on 127.0.0.1
and W&B's offline files; early stopping (engine/stopping.py) in the trainer's own loop."""
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import TINY, load_config
from detectron2.engine import TrainerBase
from detectron2.utils.events import EventStorage

from cityscapes_ft.engine.stopping import EarlyStopping
from cityscapes_ft.engine.tracking import MLflowWriter, WandbWriter
from cityscapes_ft.engine.trainer import CityscapesFTTrainer


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path, monkeypatch):
    port = _free_port()
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    proc = subprocess.Popen(
        [mlflow, "server", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db", "--default-artifact-root",
         str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"), start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
        assert time.time() < deadline, "the MLflow server did not answer /health"
        try:
            if urllib.request.urlopen(uri + "/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    yield uri, proc
    if proc.poll() is None:
        stop_server(proc)


def stop_server(proc):
    """SIGTERM to the server's process group, SIGKILL if it has not gone within 10 s (a loaded
    machine's gunicorn may take longer to shut down than a test should wait)."""
    os.killpg(proc.pid, 15)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait(30)


def _log_iterations(writer, iterations, loss_of=lambda it: 1.0 / (it + 1), evaluated=()):
    """What training puts in the event storage at each iteration, then writer.write()."""
    with EventStorage(iterations[0]) as storage:
        for it in iterations:
            storage.iter = it
            storage.put_scalar("total_loss", loss_of(it))
            storage.put_scalar("lr/backbone", 0.01 * it, smoothing_hint=False)
            storage.put_scalar("backbone_frozen", float(it < 2), smoothing_hint=False)
            if it in evaluated:
                storage.put_scalars(**{"cityscapes/AP": 0.1 * it, "segm/AP-car": 0.2 * it}, smoothing_hint=False)
            writer.write()


def _tracking_cfg(tmp_path, *writers):
    out = tmp_path / "run"
    out.mkdir(exist_ok=True)
    return load_config(TINY, "OUTPUT_DIR", str(out), "CITYSCAPES_FT.WRITERS", str(tuple(writers)),
                       "CITYSCAPES_FT.TRACKING_EXPERIMENT", "tracking-test")


@pytest.mark.slow  # starts an MLflow server / W&B's service process
def test_mlflow_run_resumes_without_repeats_and_survives_the_server_going_away(tmp_path, mlflow_server, caplog):
    from mlflow.tracking import MlflowClient

    uri, server = mlflow_server
    cfg = _tracking_cfg(tmp_path, "mlflow")
    out = cfg.OUTPUT_DIR
    # First part of a run: iterations 0..3 sent, evaluated at 3; "killed" after its checkpoint at 1.
    first = MLflowWriter(cfg)
    first.start()
    _log_iterations(first, [0, 1, 2, 3], evaluated=(3,))
    first.close()
    checkpoint_state = first.state_dict()
    # --resume from the checkpoint of iteration 1: the same run, iterations 2.. again (other values,
    # to see which were kept), then the run's files at its end.
    with open(os.path.join(out, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    os.makedirs(os.path.join(out, "eval_results"))
    with open(os.path.join(out, "eval_results", "val_iter0000006.json"), "w") as f:
        json.dump({"iteration": 6}, f)
    resumed = MLflowWriter(cfg)
    resumed.load_state_dict(checkpoint_state)
    resumed.start()
    _log_iterations(resumed, [2, 3, 4, 5], loss_of=lambda it: 100.0 + it, evaluated=(5,))
    resumed.finish()

    client = MlflowClient(uri)
    run = client.get_run(checkpoint_state["run_id"])
    assert resumed.run_id == checkpoint_state["run_id"]
    assert client.get_experiment(run.info.experiment_id).name == "tracking-test"
    assert run.info.status == "FINISHED"
    assert run.data.params["SOLVER.BASE_LR"] == str(cfg.SOLVER.BASE_LR)
    assert run.data.params["CITYSCAPES_FT.WRITERS"] == str(cfg.CITYSCAPES_FT.WRITERS)
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "total_loss"))
    # Every iteration once; 2 and 3 as the first part sent them, 4 and 5 from the resumed part.
    assert history == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3)), (3, 0.25), (4, 104.0), (5, 105.0)]
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "cityscapes/AP")] == [
        (3, pytest.approx(0.3)), (5, pytest.approx(0.5))]
    assert {m.step for m in client.get_metric_history(run.info.run_id, "lr/backbone")} == set(range(6))
    assert "segm/AP-car" in run.data.metrics and "backbone_frozen" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "eval_results"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "eval_results")] == [
        "eval_results/val_iter0000006.json"]

    # A new run; the server goes away after iteration 0 was taken: writes stay fast, one warning
    # names the server, and the end says what was not sent.
    caplog.set_level(logging.WARNING, logger="cityscapes_ft.engine.tracking")
    os.remove(os.path.join(out, "tracking", "mlflow.json"))
    lost = MLflowWriter(cfg)
    lost.start()
    _log_iterations(lost, [0])
    lost.close()
    assert lost.error is None and lost.run_id
    stop_server(server)
    t0 = time.time()
    _log_iterations(lost, [1, 2, 3])
    assert time.time() - t0 < 1.0  # training does not wait for the server
    lost.finish()
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("cannot be reached" in w for w in warnings) == 1
    assert any(uri in w and "cannot be reached" in w for w in warnings)
    assert lost.unsent_iterations == {1, 2, 3}
    assert any("could not send 3 iterations (1..3)" in w for w in warnings)


def test_mlflow_unreachable_at_start_is_one_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    caplog.set_level(logging.WARNING, logger="cityscapes_ft.engine.tracking")
    writer = MLflowWriter(_tracking_cfg(tmp_path, "mlflow"))
    writer.start()
    t0 = time.time()
    _log_iterations(writer, [0, 1, 2])
    assert time.time() - t0 < 1.0
    writer.finish()
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("cannot be reached" in w for w in warnings) == 1
    assert writer.run_id is None and writer.unsent_iterations == {0, 1, 2}


@pytest.mark.slow  # starts an MLflow server / W&B's service process
def test_wandb_offline_run_and_resume(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = _tracking_cfg(tmp_path, "wandb")
    first = WandbWriter(cfg)
    first.start()
    _log_iterations(first, [0, 1, 2, 3], evaluated=(3,))
    first.finish(failed=True)  # as training that raised
    state = first.state_dict()
    with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    resumed = WandbWriter(cfg)
    resumed.load_state_dict(state)
    resumed.start()
    _log_iterations(resumed, [2, 3, 4], evaluated=(4,))
    resumed.finish()
    assert resumed.error is None, resumed.error
    runs = sorted(d for d in os.listdir(os.path.join(cfg.OUTPUT_DIR, "wandb")) if d.startswith("offline-run-"))
    # Offline: one folder per part, both with the same run id (`wandb sync` joins them).
    assert runs and all(d.endswith(state["run_id"]) for d in runs)
    records = [r for d in runs for r in _wandb_records(os.path.join(cfg.OUTPUT_DIR, "wandb", d))]
    history = [(r.history.step.num, {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
               for r in records if r.WhichOneof("record_type") == "history"]
    # Every iteration once: the resumed part sent only 4.
    assert [step for step, _ in history] == [0, 1, 2, 3, 4]
    assert history[2][1]["total_loss"] == pytest.approx(1 / 3)
    assert [(s, v["cityscapes/AP"]) for s, v in history if "cityscapes/AP" in v] == [
        (3, pytest.approx(0.3)), (4, pytest.approx(0.4))]
    config = {i.key or "/".join(i.nested_key): i.value_json for r in records if r.WhichOneof("record_type") == "run" for i in r.run.config.update}
    assert "SOLVER.BASE_LR" in config and str(cfg.SOLVER.BASE_LR) in config["SOLVER.BASE_LR"]
    saved = os.path.join(cfg.OUTPUT_DIR, "wandb", runs[-1], "files", "run", "config.yaml")
    assert open(saved).read() == cfg.dump()


def _wandb_records(run_folder):
    """The protobuf records of an offline W&B run file (LevelDB log format: 7-byte file header,
    32 KiB blocks, records split into chunks with a 7-byte header: checksum, length, type)."""
    from wandb.proto import wandb_internal_pb2

    path = next(os.path.join(run_folder, f) for f in os.listdir(run_folder) if f.endswith(".wandb"))
    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, chunk, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the block's padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


class _Loop(TrainerBase):
    """The trainer's own loop (train, request_stop) over steps that do nothing but put the metric."""

    train = CityscapesFTTrainer.train
    request_stop = CityscapesFTTrainer.request_stop

    def __init__(self, values, cfg):
        super().__init__()
        self.values, self.cfg, self.start_iter, self.max_iter = values, cfg, 0, len(values)
        self._last_eval_results = None
        self.steps = []

    def run_step(self):
        self.steps.append(self.iter)
        self.storage.put_scalar("cityscapes/AP", self.values[self.iter], smoothing_hint=False)


def test_early_stopping_stops_the_loop_and_resumes_stopped(tmp_path):
    cfg = _tracking_cfg(tmp_path)
    values = [0.1, 0.3, 0.305, 0.2, 0.31, 0.9, 0.9, 0.9]  # +0.005 and +0.01 are not improvements
    loop = _Loop(values, cfg)
    hook = EarlyStopping(1, "cityscapes/AP", "max", patience=3, min_delta=0.02, best_checkpoint="model_best.pth")
    loop.register_hooks([hook])
    loop.train()
    assert loop.steps == [0, 1, 2, 3, 4]  # 3 evaluations after the best (at 2) without +0.02
    # the best named is the best value (0.31 after iteration 5: what model_best.pth holds), though
    # it was no improvement by +0.02 over 0.3
    assert hook.stopped_at == 5 and hook.best == 0.31 and hook.best_iteration == 5 and hook.reference == 0.3
    assert "model_best.pth" in loop.stop_reason
    record = json.load(open(os.path.join(cfg.OUTPUT_DIR, "early_stop.json")))
    assert record["best_iteration"] == 5 and record["stopped_after_iteration"] == 5

    # --resume from a checkpoint written after the stop: stays stopped, no step runs.
    again = _Loop(values, cfg)
    again.start_iter = 5
    hook2 = EarlyStopping(1, "cityscapes/AP", "max", patience=3, min_delta=0.02)
    again.register_hooks([hook2])
    again.load_state_dict({"iteration": 4, "hooks": {"EarlyStopping": hook.state_dict()}})
    again.train()
    assert again.steps == []
    # From one written before the last bad evaluation: counting goes on, stops at the same point.
    third = _Loop(values, cfg)
    third.start_iter = 4
    hook3 = EarlyStopping(1, "cityscapes/AP", "max", patience=3, min_delta=0.02)
    third.register_hooks([hook3])
    hook3.load_state_dict({"best": 0.3, "best_iteration": 2, "bad_evaluations": 2, "stopped_at": None})
    third.train()
    assert third.steps == [4] and hook3.stopped_at == 5


@pytest.mark.slow  # starts an MLflow server and trains through tools/train_net.py
def test_training_finishes_whole_when_the_mlflow_server_stops_mid_run(tmp_path, mlflow_server, synthetic_root):
    """The real server is stopped while tools/train_net.py trains (the training paused at a point
    where the server has taken some iterations and others are to come)."""
    from conftest import REPO, TINY, stop_when

    uri, server = mlflow_server
    out, max_iter = tmp_path / "run", 6
    env = dict(os.environ, DETECTRON2_DATASETS=synthetic_root, OMP_NUM_THREADS="2", MLFLOW_TRACKING_URI=uri)
    proc = subprocess.Popen(
        [sys.executable, os.path.join("tools", "train_net.py"), "--config-file", TINY, "OUTPUT_DIR", str(out),
         "SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", "2", "CITYSCAPES_FT.WRITERS", '("mlflow",)',
         "CITYSCAPES_FT.TRACKING_EXPERIMENT", "server-stops"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = out / "tracking" / "mlflow.json"

    def server_took_an_iteration():
        try:
            return json.loads(state.read_text())["last_iteration"] >= 1
        except (OSError, ValueError, KeyError):
            return False

    stop_when(proc, server_took_an_iteration)
    taken_before = json.loads(state.read_text())["last_iteration"]
    assert taken_before < max_iter - 1
    stop_server(server)
    proc.send_signal(18)  # SIGCONT
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-5000:]

    # Training as always: every iteration in metrics.json, every checkpoint, the final one last.
    from cityscapes_ft.utils import read_metrics

    records = [r["iteration"] for r in read_metrics(str(out / "metrics.json"))]
    # (the evaluation after training is recorded one past the last iteration)
    assert records == list(range(max_iter + 1))
    assert {f for f in os.listdir(out) if f.endswith(".pth")} == {"model_0000001.pth", "model_0000003.pth",
                                                                  "model_0000005.pth", "model_final.pth"}
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    # One warning naming the server; the end says what was not sent: what the server never took.
    assert sum("cannot be reached or refused a request" in line for line in log.splitlines()) == 1
    assert f"MLflow tracking server {uri} cannot be reached" in log
    taken = json.loads(state.read_text())["last_iteration"]
    assert taken_before <= taken < max_iter - 1
    assert f"mlflow: could not send {max_iter - taken} iterations ({taken + 1}..{max_iter}) and " in log


@pytest.mark.slow  # two CPU training processes over gloo
def test_early_stopping_stops_every_process_after_the_same_iteration(tmp_path, synthetic_root):
    """Under --num-gpus 2: MIN_DELTA 100 (AP points) cannot be beaten, so with PATIENCE 1 the run
    stops at its second evaluation (iteration 4 of 12) whatever the AP values; the report names
    the best checkpoint."""
    from conftest import TINY, train_net

    out = tmp_path / "run"
    train_net("--num-gpus", "2", "--dist-url", "auto", "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "12",
              "SOLVER.STEPS", "()", "TEST.EVAL_PERIOD", "2", "CITYSCAPES_FT.EVAL_TASKS", '("bbox",)',
              "CITYSCAPES_FT.BEST_CHECKPOINT_METRIC", "bbox/AP", "CITYSCAPES_FT.EARLY_STOP.PATIENCE", "1",
              "CITYSCAPES_FT.EARLY_STOP.MIN_DELTA", "100.0", config=TINY, datasets=synthetic_root)
    for log in ("log.txt", "log.txt.rank1"):  # each process stopped itself, after iteration 4
        text = (out / log).read_text()
        assert text.count("Stopping training: early stopping after iteration 4:") == 1, log
        assert "model_best.pth" in text.split("Stopping training:")[1].splitlines()[0]
    from cityscapes_ft.utils import read_metrics

    assert [r["iteration"] for r in read_metrics(str(out / "metrics.json"))][-1] == 3
    assert not (out / "model_final.pth").exists() and (out / "model_0000003.pth").exists()
    record = json.loads((out / "early_stop.json").read_text())
    assert record["stopped_after_iteration"] == 4 and record["best_iteration"] in (2, 4)
    best = torch_load(out / "model_best.pth")
    # the best named is the one model_best.pth holds (an improvement under MIN_DELTA still counts)
    assert best["iteration"] + 1 == record["best_iteration"]
    report = (out / "report.html").read_text()
    assert "Stopped early after iteration 4" in report
    assert f"is <b>{out / 'model_best.pth'}</b>." in report


def torch_load(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)
