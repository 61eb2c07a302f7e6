"""Checkpoints, last_checkpoint and result files are written atomically; kill -9 and resume."""
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import CONFIGS, REPO, load_config, resume_point, stop_when, training_starts
from detectron2.modeling import build_model

from cityscapes_ft.checkpoint import build_checkpointer
from cityscapes_ft.utils import atomic_open, atomic_write_json

TINY = os.path.join(CONFIGS, "quick_schedules", "cs_ft_cpu_tiny.yaml")


def test_atomic_open_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "results.json"
    atomic_write_json(str(path), {"AP": 1.0})
    with pytest.raises(RuntimeError):
        with atomic_open(str(path), "w") as f:
            f.write('{"AP": 2')
            raise RuntimeError("killed mid-write")
    assert path.read_text().replace(" ", "").replace("\n", "") == '{"AP":1.0}'
    assert os.listdir(tmp_path) == ["results.json"]  # no temporary file left behind


def test_failed_checkpoint_save_leaves_previous_checkpoint_and_tag(tmp_path, monkeypatch):
    model = build_model(load_config(TINY))
    checkpointer = build_checkpointer(load_config(TINY), model, str(tmp_path))
    checkpointer.save("model_0000001")
    good = (tmp_path / "model_0000001.pth").read_bytes()

    def crash(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpointer.save("model_0000002")
    monkeypatch.undo()
    assert not (tmp_path / "model_0000002.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert (tmp_path / "model_0000001.pth").read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]


@pytest.mark.slow
def test_kill_9_while_a_checkpoint_is_written_then_resume_finishes(synthetic_root, tmp_path):
    """A checkpoint every iteration, killed with SIGKILL in the middle of writing the checkpoint of
    iteration 4: that file is not there, last_checkpoint names the one before, which loads, and
    --resume continues from iteration 4 to the weights an uninterrupted run ends with (same seed,
    no loader workers), across the end of the frozen phase and the LR step."""
    out = tmp_path / "killed"
    env = dict(os.environ, DETECTRON2_DATASETS=synthetic_root, OMP_NUM_THREADS="2")
    cmd = [sys.executable, "tools/train_net.py", "--config-file", TINY]
    common = ["SOLVER.MAX_ITER", "12", "SOLVER.STEPS", "(10,)", "SOLVER.CHECKPOINT_PERIOD", "1",
              "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "SEED", "7",
              "CITYSCAPES_FT.BACKBONE_FREEZE.ITERS", "8"]
    reference = str(tmp_path / "uninterrupted")
    done = subprocess.run(cmd + ["OUTPUT_DIR", reference] + common, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    opts = ["OUTPUT_DIR", str(out)] + common

    def temporary():  # the atomic write's temporary file of model_0000004.pth, once it exists
        names = os.listdir(out) if out.exists() else []
        return next((n for n in names if n.startswith(".model_0000004.pth.") and n.endswith(".tmp")), None)

    proc = subprocess.Popen(cmd + opts, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # stopped while the temporary file is still there (not yet renamed into place)
        written = stop_when(proc, temporary, still=lambda name: (out / name).exists())
    finally:
        proc.kill()
        proc.wait()
    assert (out / written).exists() and not (out / "model_0000004.pth").exists()
    assert (out / "last_checkpoint").read_text() == "model_0000003.pth"
    assert resume_point(out) == 4  # the checkpoint it names loads
    done = subprocess.run(cmd + ["--resume"] + opts, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert training_starts(out) == [0, 4]
    assert not (out / written).exists()  # what the kill left is cleared
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == 11
    expected = torch.load(os.path.join(reference, "model_final.pth"), map_location="cpu", weights_only=False)
    for name, value in expected["model"].items():
        torch.testing.assert_close(final["model"][name], value, rtol=1e-6, atol=1e-7, msg=name)
    # metrics.json: every line a complete record, every iteration once, up to the end
    lines = open(out / "metrics.json").read().splitlines()
    iterations = [json.loads(line)["iteration"] for line in lines]
    assert iterations == list(range(12))


def test_metrics_writer_replaces_what_a_resumed_run_repeats(tmp_path):
    from detectron2.utils.events import EventStorage

    from cityscapes_ft.engine.metrics_writer import AtomicJSONWriter
    from cityscapes_ft.utils import read_metrics

    path = str(tmp_path / "metrics.json")
    with EventStorage(0) as storage:
        writer = AtomicJSONWriter(path)
        for it in range(6):
            storage.iter = it
            storage.put_scalar("loss", float(it), smoothing_hint=False)
            writer.write()
    with open(path, "a") as f:
        f.write('{"iteration": 6, "lo')  # a torn line, as an appending writer leaves it
    with EventStorage(3) as storage:  # resumed from the checkpoint after iteration 2
        writer = AtomicJSONWriter(path)
        for it in range(3, 5):
            storage.iter = it
            storage.put_scalar("loss", 10.0 + it, smoothing_hint=False)
            writer.write()
    records = read_metrics(path)
    assert [r["iteration"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["loss"] for r in records] == [0.0, 1.0, 2.0, 13.0, 14.0]
    # every line of the file is a whole record (nothing after the dropped torn line)
    assert [json.loads(line)["iteration"] for line in open(path)] == [0, 1, 2, 3, 4]
