"""Reliability II: one run per OUTPUT_DIR, strict loading where numbers are published or a run
continues, every checkpoint failure named and survived, whole records and files, bad images met
while training, and a seeded fault-injection run."""
import json
import os
import random
import resource
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, TINY, load_config, resume_point, stop_when, train_net, training_starts
from detectron2.modeling import build_model

from cityscapes_ft.utils import read_metrics

pytestmark = pytest.mark.slow  # every test here trains or starts processes

SHORT = ("TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "SEED", "7")


def start_train_net(out, *opts, datasets, umask=None, fsize=None, output=subprocess.PIPE):
    """tools/train_net.py on the tiny config as a background process, its stdout and stderr to
    `output` (a file for one that runs on while the test waits: a full pipe would block it)."""
    def limits():
        if umask is not None:
            os.umask(umask)
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = dict(os.environ, DETECTRON2_DATASETS=datasets, OMP_NUM_THREADS="2")
    return subprocess.Popen(
        [sys.executable, os.path.join("tools", "train_net.py"), "--config-file", TINY, *opts,
         "OUTPUT_DIR", str(out)],
        cwd=REPO, env=env, stdout=output, stderr=output, text=True, preexec_fn=limits,
    )


def wait_for(condition, proc=None, timeout=240):
    start = time.time()
    while not condition():
        assert time.time() - start < timeout, "timed out"
        assert proc is None or proc.poll() is None, "the process ended first"
        time.sleep(0.02)


def error_lines(text):
    return [line for line in text.splitlines() if line.startswith("error")]


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


# --- one run per OUTPUT_DIR ----------------------------------------------------------------------

def test_a_second_run_into_a_held_output_dir_is_refused_and_a_dead_holders_lock_is_taken_over(
        synthetic_root, tmp_path):
    lock = tmp_path / ".cityscapes_ft_run.lock"
    first = start_train_net(tmp_path, "SOLVER.MAX_ITER", "500", *SHORT, datasets=synthetic_root,
                            output=subprocess.DEVNULL)
    try:
        # held, and stopped (alive) once it has tagged a checkpoint (the tiny config saves every 2)
        stop_when(first, lambda: (tmp_path / "last_checkpoint").exists())
        holder = json.loads(lock.read_text())
        second = train_net("SOLVER.MAX_ITER", "2", *SHORT, "OUTPUT_DIR", str(tmp_path),
                           datasets=synthetic_root, expect_ok=False)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        (line,) = error_lines(second.stderr)
        assert f"in use by process {first.pid} on host {holder['host']}" in line
    finally:
        first.kill()
        first.wait()
    # killed with its lock record in place: the next run takes the folder over, with a warning,
    # and continues after the checkpoint the killed one tagged
    restart = resume_point(tmp_path)
    assert restart >= 2
    third = train_net("--resume", "SOLVER.MAX_ITER", str(restart + 1), *SHORT,
                      "OUTPUT_DIR", str(tmp_path), datasets=synthetic_root)
    assert f"from process {first.pid}" in third.stdout + third.stderr
    assert training_starts(tmp_path) == [0, restart]
    assert lock.read_text() == ""  # released at the end


# --- strict loading where numbers are published or a run continues -------------------------------

@pytest.fixture(scope="module")
def finished_run(synthetic_root, tmp_path_factory):
    """A 4-iteration run, a checkpoint every iteration, made under umask 022."""
    out = tmp_path_factory.mktemp("finished")
    proc = start_train_net(out, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "1",
                           "TEST.EVAL_PERIOD", "4", "SEED", "7", "CITYSCAPES_FT.VIS_NUM_IMAGES", "1",
                           datasets=synthetic_root, umask=0o022)
    output, errors = proc.communicate(timeout=600)
    assert proc.returncode == 0, errors[-3000:]
    return out


def test_files_are_created_with_the_users_umask(finished_run):
    for name in ("model_final.pth", "last_checkpoint", "metrics.json", "config.yaml",
                 "report.html", "eval_results/cityscapes_ft_instance_val_iter0000004.json",
                 "inference/cityscapes_ft_instance_val/instances_predictions.json"):
        assert stat.S_IMODE(os.stat(finished_run / name).st_mode) == 0o644, name


@pytest.mark.parametrize("change", ["NUM_CLASSES 3", "FPN width 128", "box head 512"])
def test_eval_only_refuses_weights_that_do_not_fit_but_fine_tuning_accepts_them(change, synthetic_root,
                                                                                 tmp_path):
    opts = {"NUM_CLASSES 3": ("MODEL.ROI_HEADS.NUM_CLASSES", "3"),
            "FPN width 128": ("MODEL.FPN.OUT_CHANNELS", "128"),
            "box head 512": ("MODEL.ROI_BOX_HEAD.FC_DIM", "512")}[change]
    other = tmp_path / "other.pth"
    torch.save({"model": build_model(load_config(TINY, *opts)).state_dict()}, other)
    proc = train_net("--eval-only", "MODEL.WEIGHTS", str(other), "OUTPUT_DIR", str(tmp_path / "eval"),
                     datasets=synthetic_root, expect_ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = error_lines(proc.stderr)
    assert "do not fit this model" in line and str(other) in line and "in the checkpoint" in line
    assert not (tmp_path / "eval" / "eval_results").exists()
    if change == "NUM_CLASSES 3":  # a fine-tuning start stays lenient: the class heads start fresh
        train_net("MODEL.WEIGHTS", str(other), "SOLVER.MAX_ITER", "1", *SHORT, "OUTPUT_DIR",
                  str(tmp_path / "ft"), datasets=synthetic_root)


def test_resume_refuses_a_checkpoint_that_does_not_fit(finished_run, synthetic_root, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"model": build_model(load_config(TINY, "MODEL.ROI_HEADS.NUM_CLASSES", "3")).state_dict(),
                "iteration": 1}, out / "model_0000001.pth")
    (out / "last_checkpoint").write_text("model_0000001.pth")
    proc = train_net("--resume", "SOLVER.MAX_ITER", "4", *SHORT, "OUTPUT_DIR", str(out),
                     datasets=synthetic_root, expect_ok=False)
    assert proc.returncode == 2
    (line,) = error_lines(proc.stderr)
    assert "do not fit this model" in line and "roi_heads.box_predictor.cls_score.weight" in line
    assert training_starts(out) == []


# --- checkpoint read and write failures: one line, and survived ------------------------------------

def copy_run(src, dst, names):
    dst.mkdir()
    for name in names:
        (dst / name).write_bytes((src / name).read_bytes())


def test_resume_skips_a_truncated_checkpoint_and_continues_from_the_newest_that_loads(
        finished_run, synthetic_root, tmp_path):
    out = tmp_path / "run"
    copy_run(finished_run, out, ["model_0000001.pth", "model_0000002.pth", "last_checkpoint", "config.yaml"])
    (out / "last_checkpoint").write_text("model_0000002.pth")
    data = (out / "model_0000002.pth").read_bytes()
    (out / "model_0000002.pth").write_bytes(data[: len(data) // 3])
    proc = train_net("--resume", "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "1", *SHORT,
                     "OUTPUT_DIR", str(out), datasets=synthetic_root)
    log = proc.stdout + proc.stderr
    assert f"skipping {out / 'model_0000002.pth'}" in log
    assert f"--resume continues from {out / 'model_0000001.pth'}" in log
    assert training_starts(out) == [2]
    assert [r["iteration"] for r in read_metrics(out / "metrics.json") if "lr" in r] == [2, 3]
    for k, v in weights(out / "model_final.pth").items():  # as the uninterrupted run ended
        assert torch.equal(v, weights(finished_run / "model_final.pth")[k]), k

    # an empty last_checkpoint, and nothing readable at all: one line, naming what was tried
    for name in ("model_0000001.pth", "model_0000002.pth", "model_0000003.pth", "model_final.pth"):
        (out / name).write_bytes(b"")
    (out / "last_checkpoint").write_text("")
    proc = train_net("--resume", "SOLVER.MAX_ITER", "4", *SHORT, "OUTPUT_DIR", str(out),
                     datasets=synthetic_root, expect_ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = error_lines(proc.stderr)
    assert "found no checkpoint" in line and "model_0000003.pth" in line


def test_unreadable_weights_are_named_and_the_previous_runs_checkpoints_stay(finished_run, synthetic_root, tmp_path):
    out = tmp_path / "run"
    copy_run(finished_run, out, ["config.yaml", "last_checkpoint", "model_final.pth", "metrics.json"])
    broken = tmp_path / "model_final_f10217.pkl"
    broken.write_bytes(b"\x80\x04\x95 truncated")
    before = {n: (out / n).read_bytes() for n in ("last_checkpoint", "model_final.pth", "metrics.json")}
    proc = train_net("MODEL.WEIGHTS", str(broken), "SOLVER.MAX_ITER", "9", *SHORT, "OUTPUT_DIR", str(out),
                     datasets=synthetic_root, expect_ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = error_lines(proc.stderr)
    assert str(broken) in line and "cannot be read" in line
    assert {n: (out / n).read_bytes() for n in before} == before  # the failed start replaced nothing
    assert not list(out.glob("model_000*.pth"))


def test_a_checkpoint_that_cannot_be_written_stops_in_one_line_and_keeps_the_previous(synthetic_root, tmp_path):
    # files may grow to 30 MB: logs and metrics fit, a checkpoint (about 100 MB) does not
    proc = start_train_net(tmp_path, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "1", *SHORT,
                           datasets=synthetic_root, fsize=30 * 2**20)
    output, errors = proc.communicate(timeout=600)
    assert proc.returncode == 2 and "Traceback" not in errors + output
    (line,) = error_lines(errors)
    assert f"Could not write checkpoint {tmp_path / 'model_0000000.pth'} (File too large)" in line
    assert "--resume" in line
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    assert not (tmp_path / "last_checkpoint").exists()


# --- whole records and files ------------------------------------------------------------------------

def test_resuming_a_finished_run_killed_in_its_final_save_writes_model_final_and_clears_leftovers(
        finished_run, synthetic_root, tmp_path):
    out = tmp_path / "run"
    copy_run(finished_run, out, ["model_0000003.pth", "metrics.json", "config.yaml"])
    # the kill came while model_final.pth was being written: its temporary file is left
    (out / ".model_final.pth.Ab3dE_9x.tmp").write_bytes(b"half a checkpoint")
    (out / "last_checkpoint").write_text("model_0000003.pth")
    train_net("--resume", "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "1", *SHORT,
              "OUTPUT_DIR", str(out), datasets=synthetic_root)
    assert training_starts(out) == [4]  # after the checkpoint of iteration 3: nothing left to train
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == 3
    for k, v in weights(finished_run / "model_final.pth").items():
        assert torch.equal(final["model"][k], v), k
    assert not (out / ".model_final.pth.Ab3dE_9x.tmp").exists()


def test_kill_during_eval_only_leaves_the_previous_evaluation_whole(finished_run, synthetic_root, tmp_path):
    out = tmp_path / "eval"
    first = train_net("--eval-only", "MODEL.WEIGHTS", str(finished_run / "model_0000001.pth"),
                      "OUTPUT_DIR", str(out), datasets=synthetic_root)
    assert first.returncode == 0
    inference = out / "inference" / "cityscapes_ft_instance_val"
    before = {p: (inference / p).read_bytes() for p in ("instances_predictions.json", "results.json")}
    (summary_file,) = (out / "eval_results").iterdir()
    summary = summary_file.read_bytes()
    proc = subprocess.Popen(
        [sys.executable, os.path.join("tools", "train_net.py"), "--config-file", TINY, "--eval-only",
         "MODEL.WEIGHTS", str(finished_run / "model_final.pth"), "OUTPUT_DIR", str(out)],
        cwd=REPO, env=dict(os.environ, DETECTRON2_DATASETS=synthetic_root), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    staging = out / "inference" / "cityscapes_ft_instance_val.partial"
    wait_for(lambda: staging.exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert {p: (inference / p).read_bytes() for p in before} == before
    assert sorted((out / "eval_results").iterdir()) == [summary_file] and summary_file.read_bytes() == summary
    results = json.loads(before["results.json"])
    assert results["checkpoint"].endswith("model_0000001.pth")
    # the next evaluation replaces the whole set and clears what the kill left
    train_net("--eval-only", "MODEL.WEIGHTS", str(finished_run / "model_final.pth"), "OUTPUT_DIR", str(out),
              datasets=synthetic_root)
    assert json.loads((inference / "results.json").read_text())["checkpoint"].endswith("model_final.pth")
    assert not staging.exists()


# --- bad images met while training --------------------------------------------------------------------

@pytest.mark.parametrize("workers", [0, 2])
def test_an_image_truncated_after_its_header_is_skipped_or_named_in_one_line(workers, tmp_path):
    from cityscapes_ft.data.synthetic import make_synthetic_cityscapes

    root = tmp_path / "d2" / "cityscapes"
    make_synthetic_cityscapes(str(root), 4, 0, 128, 64, seed=5, log=lambda *_: None)
    image = sorted((root / "leftImg8bit" / "train").rglob("*.png"))[1]
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])  # the header (and size) still reads
    datasets = str(root.parent)
    common = ("SOLVER.MAX_ITER", "6", *SHORT, "DATALOADER.NUM_WORKERS", str(workers))
    failed = train_net(*common, "OUTPUT_DIR", str(tmp_path / "a"), datasets=datasets, expect_ok=False)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    (line,) = error_lines(failed.stderr)
    assert f"Unreadable image {image}" in line
    assert len(failed.stderr.strip().splitlines()) < 15
    ok = train_net(*common, "CITYSCAPES_FT.ON_BAD_SAMPLE", "skip", "OUTPUT_DIR", str(tmp_path / "b"),
                   datasets=datasets)
    assert f"Skipped a training sample (CITYSCAPES_FT.ON_BAD_SAMPLE skip): Unreadable image {image}" in (
        ok.stdout + ok.stderr)
    assert os.path.isfile(tmp_path / "b" / "model_final.pth")


# --- fault injection ------------------------------------------------------------------------------------

def test_training_killed_at_random_points_ends_as_the_uninterrupted_run(synthetic_root, tmp_path):
    """kill -9 at seeded random points, during steps and in the middle of checkpoint writes, the
    last while model_final.pth is written, then --resume, until the run ends: every run continues
    after the checkpoint that last_checkpoint names, and the final weights, every metrics record
    and last_checkpoint are those of the run that was never stopped."""
    run = ("SOLVER.MAX_ITER", "12", "SOLVER.STEPS", "(9,)", "SOLVER.CHECKPOINT_PERIOD", "1", *SHORT)
    reference = tmp_path / "reference"
    train_net(*run, "OUTPUT_DIR", str(reference), datasets=synthetic_root)
    out = tmp_path / "killed"

    def iteration(checkpoint):  # model_0000004.pth -> 4; model_final.pth after them all
        return 12 if checkpoint == "model_final.pth" else int(checkpoint[6:-4])

    def tagged():
        tag = out / "last_checkpoint"
        return tag.read_text().strip() if tag.exists() else None

    def writes():  # the checkpoints being written: name -> temporary file of the atomic write
        names = os.listdir(out) if out.exists() else []
        return {n[1:].split(".pth.")[0] + ".pth": n for n in names
                if n.startswith(".model_") and n.endswith(".tmp")}

    # The points, chosen by the seed: ("step", k) is the step after the checkpoint of iteration k
    # is tagged, ("save", k) the write of the checkpoint of iteration k (its temporary file exists,
    # the file itself not yet). A point the poll sees too late gives way to the next of its kind.
    rng = random.Random(20261129)
    kinds = ["step", "save"] * 2
    rng.shuffle(kinds)
    plan = list(zip(kinds, sorted(rng.sample(range(1, 11), 4)))) + [("save", 12)]
    restarts = []
    for n, (kind, k) in enumerate(plan):
        with open(tmp_path / f"process{n}.txt", "w") as output:
            proc = start_train_net(out, *(("--resume",) if n else ()), *run,
                                   datasets=synthetic_root, output=output)
        try:
            if kind == "step":
                before = tagged()
                stop_when(proc, lambda: tagged() != before and iteration(tagged()) >= k)
            else:
                left = set(writes().values())  # by a killed run; this one removes them as it starts
                started = lambda: next(  # noqa: E731
                    (c for c, t in writes().items() if t not in left and iteration(c) >= k), None)
                still = lambda c: writes().get(c) not in left | {None}  # noqa: E731
                checkpoint = stop_when(proc, started, still)
                temporary = writes()[checkpoint]
        finally:
            proc.kill()
            proc.wait()
        restarts.append(resume_point(out))
        if kind == "save":  # killed mid-write: the file is not there, the one before it is tagged
            assert (out / temporary).exists() and not (out / checkpoint).exists()
            assert restarts[-1] == iteration(checkpoint)
    with open(tmp_path / "last_process.txt", "w") as output:
        proc = start_train_net(out, "--resume", *run, datasets=synthetic_root, output=output)
    assert proc.wait(timeout=600) == 0, (tmp_path / "last_process.txt").read_text()[-3000:]
    # every run started after the checkpoint that last_checkpoint named when the previous was killed
    assert training_starts(out) == [0] + restarts
    assert restarts[-1] == 12  # killed while writing model_final.pth: nothing left but to write it
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    for k, v in weights(reference / "model_final.pth").items():
        assert torch.equal(weights(out / "model_final.pth")[k], v), k
    ours = [r for r in read_metrics(out / "metrics.json") if "lr" in r]
    theirs = [r for r in read_metrics(reference / "metrics.json") if "lr" in r]
    # every iteration once, at its LR (losses are written as medians over the process's own
    # window, which a resumed process starts anew, so they are compared through the weights)
    assert [r["iteration"] for r in ours] == [r["iteration"] for r in theirs] == list(range(12))
    assert [r["lr"] for r in ours] == [r["lr"] for r in theirs]


def test_a_checkpoint_written_by_plain_detectron2_resumes(finished_run, synthetic_root, tmp_path):
    """What detectron2 v0.6's DefaultTrainer saves: no optimizer state, no data-stream position,
    its LRScheduler hook's name. Upstream detectron2 reads `_trainer` unconditionally; ours does
    not need it."""
    out = tmp_path / "run"
    out.mkdir()
    ckpt = torch.load(finished_run / "model_0000001.pth", map_location="cpu", weights_only=False)
    trainer = ckpt["trainer"]
    plain = {"model": ckpt["model"], "iteration": 1,
             "trainer": {"iteration": trainer["iteration"],
                         "hooks": {"LRScheduler": trainer["hooks"]["LayerwiseLRScheduler"]}}}
    torch.save(plain, out / "model_0000001.pth")
    (out / "last_checkpoint").write_text("model_0000001.pth")
    proc = train_net("--resume", "SOLVER.MAX_ITER", "3", *SHORT, "OUTPUT_DIR", str(out), datasets=synthetic_root)
    log = proc.stdout + proc.stderr
    assert "no optimizer state" in log and "no data-stream position" in log
    assert training_starts(out) == [2]
    assert [r["iteration"] for r in read_metrics(out / "metrics.json") if "lr" in r] == [2]
    resumed = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert resumed["iteration"] == 2 and resumed["trainer"]["hooks"]["LayerwiseLRScheduler"]["last_epoch"] == 3


def test_a_start_that_fails_leaves_the_folder_free(tmp_path):
    failed = train_net("SOLVER.MAX_ITER", "2", *SHORT, "OUTPUT_DIR", str(tmp_path / "out"),
                       datasets=str(tmp_path / "no_data_here"), expect_ok=False)
    assert failed.returncode == 2 and "Cityscapes folder not found" in failed.stderr
    assert (tmp_path / "out" / ".cityscapes_ft_run.lock").read_text() == ""  # released, not left held
