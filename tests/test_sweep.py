"""Sweeps on Optuna (tools/sweep.py, cityscapes_ft.engine.sweep): real SQLite studies, trials that are
real training runs on the synthetic data, two workers sharing a study, a trial that Optuna's
pruner prunes at a periodic evaluation, and a killed sweep that resumes.

Trials fine-tune the `trained` fixture's model for 2 iterations with box AP as the objective,
evaluated after each iteration. With SOLVER.BASE_LR 0 the model does not change, so the trial's
AP must be the fixture's own final box AP (an independent reference); with a wrecking LR it
falls far below, and a ThresholdPruner set halfway prunes that trial at its first evaluation."""
import fcntl
import json
import os
import subprocess
import sys
import time

import pytest
import yaml
from conftest import FIXTURE, FIXTURE_MAX_ITER, REPO, evaluation_of, load_config, resume_point, stop_when
from conftest import train_net, training_starts

from cityscapes_ft.errors import ConfigNotRunnable

WRECK_LR = 1.0  # one SGD step at this LR (no warmup) ruins the trained model
METRIC = "bbox/AP"
# 2 iterations evaluated after each (the first is a periodic evaluation, reported to the trial),
# checkpoints after each, box AP only (the fastest evaluation), no warmup (the LR is the LR).
TRIAL_OPTS = ["SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "1", "SOLVER.CHECKPOINT_PERIOD", "1",
              "SOLVER.WARMUP_FACTOR", "1.0", "SOLVER.STEPS", "()", "CITYSCAPES_FT.EVAL_TASKS", '("bbox",)',
              "CITYSCAPES_FT.BEST_CHECKPOINT_METRIC", METRIC, "CITYSCAPES_FT.VIS_NUM_IMAGES", "0",
              "CITYSCAPES_FT.WRITERS", "()"]


def _sweep_command(sweep_dir, space, trials, weights, *extra):
    return [sys.executable, os.path.join(REPO, "tools", "sweep.py"), "--config-file", FIXTURE, "--space", str(space),
            "--trials", str(trials), "--output", str(sweep_dir), *extra, "MODEL.WEIGHTS", weights, *TRIAL_OPTS]


def _start(command, datasets, log):
    env = dict(os.environ, DETECTRON2_DATASETS=datasets, OMP_NUM_THREADS="1")
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def _finish(proc, log_path, timeout=600):
    assert proc.wait(timeout) == 0, open(log_path).read()[-5000:]


def _study(sweep_dir, name):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir}/study.db")


def _trial_config(sweep_dir, number):
    with open(os.path.join(sweep_dir, f"trial_{number}", "config.yaml")) as f:
        return yaml.safe_load(f)


def _first_choice(seed, choices):
    """What a RandomSampler seeded `seed` draws first from `choices` (in memory)."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return study.ask({"x": CategoricalDistribution(choices)}).params["x"]


@pytest.mark.slow  # trains: 3 trials in two sweep workers, then one evaluation
def test_two_workers_share_a_study_the_wrecked_trial_is_pruned_and_best_config_runs(trained, synthetic_root,
                                                                                     tmp_path):
    out, _ = trained
    weights = os.path.join(out, "model_final.pth")
    trained_ap = evaluation_of(out, FIXTURE_MAX_ITER)["results"]["bbox"]["AP"]
    lower = trained_ap / 2
    choices = [0.0, WRECK_LR]
    space = tmp_path / "space.yaml"
    space.write_text(f"SOLVER.BASE_LR: {{type: categorical, choices: {choices}}}\n")
    # Seeds whose first draws differ: the two workers' first trials run one of each value.
    seeds = {_first_choice(seed, choices): seed for seed in range(20)}
    assert set(seeds) == set(choices)
    sweep = tmp_path / "sweep"
    procs, logs = [], []
    for worker, value in enumerate(choices):
        logs.append(tmp_path / f"worker{worker}.log")
        procs.append(_start(_sweep_command(sweep, space, 3, weights, "--study", "shared", "--sampler", "RandomSampler",
                                           "--sampler-args", f"{{seed: {seeds[value]}}}", "--pruner", "ThresholdPruner",
                                           "--pruner-args", f"{{lower: {lower}}}"),
                            synthetic_root, open(logs[-1], "w")))
    for proc, log in zip(procs, logs):
        _finish(proc, log)

    study = _study(sweep, "shared")
    trials = {t.number: t for t in study.get_trials() if t.number < 3}
    assert sorted(trials) == [0, 1, 2]
    assert all(t.user_attrs.get("not_run") for t in study.get_trials() if t.number >= 3)  # a surplus ask, not run
    assert len({t.user_attrs["worker"] for t in trials.values()}) == 2  # both workers ran trials
    lrs = {n: t.params["SOLVER.BASE_LR"] for n, t in trials.items()}
    assert set(lrs.values()) == set(choices)
    for n, trial in trials.items():
        folder = sweep / f"trial_{n}"
        assert _trial_config(sweep, n)["SOLVER"]["BASE_LR"] == lrs[n]  # the sampled value is the one used
        if lrs[n] == WRECK_LR:
            assert trial.state.name == "PRUNED", (n, trial.state, trial.intermediate_values)
            assert list(trial.intermediate_values) == [1] and trial.intermediate_values[1] < lower
            assert json.loads((folder / "pruned.json").read_text())["pruned_after_iteration"] == 1
            assert resume_point(str(folder)) == 1 and not (folder / "model_final.pth").exists()  # stopped after 1
        else:
            assert trial.state.name == "COMPLETE", (n, trial.state, trial.user_attrs)
            # The unchanged model scores what the fixture's evaluation of it found.
            assert trial.value == pytest.approx(trained_ap, abs=1e-6)
            assert evaluation_of(str(folder), 2)["results"]["bbox"]["AP"] == pytest.approx(trial.value, abs=1e-6)
            assert trial.intermediate_values == {1: pytest.approx(trained_ap, abs=1e-6)}

    rows = json.loads((sweep / "trials.json").read_text())
    assert [(r["trial"], r["state"], r["SOLVER.BASE_LR"]) for r in rows] == [
        (n, trials[n].state.name, lrs[n]) for n in range(3)]
    assert (sweep / "trials.csv").read_text().splitlines()[0].startswith("trial,state,value,SOLVER.BASE_LR")
    page = (sweep / "sweep.html").read_text()
    assert page.count("<tr class='PRUNED") == list(lrs.values()).count(WRECK_LR)
    assert 'alt="Optimisation history"' in page and "Intermediate values" in page
    assert os.path.isfile(sweep / "plots" / "history.png")

    # best_config.yaml runs as it is with tools/train_net.py: evaluating its weights gives the best value.
    best = study.best_trial
    cfg = load_config(str(sweep / "best_config.yaml"))
    assert cfg.SOLVER.BASE_LR == best.params["SOLVER.BASE_LR"] and cfg.CITYSCAPES_FT.SWEEP.STORAGE == ""
    assert cfg.OUTPUT_DIR == os.path.join(str(sweep), "best")
    train_net("--eval-only", config=str(sweep / "best_config.yaml"), datasets=synthetic_root)
    (record,) = [json.loads(f.read_text()) for f in (sweep / "best" / "eval_results").iterdir()]
    assert record["checkpoint"] == weights
    assert record["results"]["bbox"]["AP"] == pytest.approx(best.value, abs=1e-6)


@pytest.mark.slow  # trains: 2 trials, a kill, the resumed sweep
def test_a_killed_sweep_keeps_finished_trials_and_resumes_the_interrupted_one(trained, synthetic_root, tmp_path):
    out, _ = trained
    space = tmp_path / "space.yaml"
    space.write_text("SOLVER.BASE_LR: {type: float, low: 0.0, high: 0.0001}\n")
    sweep = tmp_path / "sweep"
    command = _sweep_command(sweep, space, 2, os.path.join(out, "model_final.pth"), "--pruner", "NopPruner")
    log = tmp_path / "first.log"
    proc = _start(command, synthetic_root, open(log, "w"))
    second = sweep / "trial_1"
    # Killed (with its trial's training) once the second trial has a checkpoint after iteration 1.
    stop_when(proc, lambda: (second / "last_checkpoint").is_file())
    proc.kill()
    proc.wait()
    _wait_until_released(second / ".cityscapes_ft_run.lock")
    first_done = (sweep / "trial_0" / "metrics.json").stat().st_mtime_ns
    assert _study(sweep, "sweep").get_trials()[1].state.name == "RUNNING"

    log = tmp_path / "second.log"
    _finish(_start(command, synthetic_root, open(log, "w")), log)
    assert "Trial 1 was interrupted (its worker is gone): resuming it" in log.read_text()
    study = _study(sweep, "sweep")
    assert [(t.number, t.state.name) for t in study.get_trials()] == [(0, "COMPLETE"), (1, "COMPLETE")]
    assert (sweep / "trial_0" / "metrics.json").stat().st_mtime_ns == first_done  # the finished trial kept
    assert training_starts(str(sweep / "trial_0")) == [0]
    assert training_starts(str(second)) == [0, 1]  # resumed after its checkpoint, not rerun
    for trial in study.get_trials():
        assert _trial_config(sweep, trial.number)["SOLVER"]["BASE_LR"] == trial.params["SOLVER.BASE_LR"]
        assert 0.0 <= trial.params["SOLVER.BASE_LR"] <= 0.0001
    assert len(json.loads((sweep / "trials.json").read_text())) == 2


def _wait_until_released(lock_path, timeout=30):
    """The killed worker's trial dies with it (PR_SET_PDEATHSIG); wait until its OUTPUT_DIR lock is free."""
    deadline = time.time() + timeout
    with open(lock_path, "a+") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                assert time.time() < deadline, "the killed sweep's trial still holds its folder"
                time.sleep(0.1)


@pytest.mark.parametrize("text, expected", [
    ("SOLVER.BASE_LRR: {type: float, low: 0.001, high: 0.02}", "SOLVER.BASE_LRR: not a config key of"),
    ("SOLVER.BASE_LR: {type: normal, low: 0.001}", "SOLVER.BASE_LR: expected a mapping with type float, int or "
                                                   "categorical"),
    ("SOLVER.BASE_LR: {type: float, low: 0.02, high: 0.001}", "SOLVER.BASE_LR: `low <= high` must hold"),
    ("SOLVER.BASE_LR: {type: float, low: 0.001, hi: 0.02}", "SOLVER.BASE_LR: float takes low, high, log, step; not hi"),
    ("MODEL.BACKBONE.FREEZE_AT: {type: float, low: 0, high: 2}", "MODEL.BACKBONE.FREEZE_AT: the value 0.0 does not fit"),
    ("MODEL.RESNETS.NORM: {type: categorical, choices: []}", "MODEL.RESNETS.NORM: choices must be a non-empty list"),
    ("OUTPUT_DIR: {type: categorical, choices: [a, b]}", "OUTPUT_DIR: the sweep sets OUTPUT_DIR itself"),
    ("[SOLVER.BASE_LR", "is not valid YAML"),
])
def test_a_bad_space_file_is_one_error_naming_the_file_and_key(tmp_path, text, expected):
    from cityscapes_ft.engine.sweep.space import load_search_space

    space = tmp_path / "space.yaml"
    space.write_text(text + "\n")
    with pytest.raises(ConfigNotRunnable) as e:
        load_search_space(str(space), FIXTURE)
    assert str(space) in str(e.value) and expected in str(e.value) and "\n" not in str(e.value)


def test_the_cs_ft_space_fits_cs_ft_yaml():
    from cityscapes_ft.engine.sweep.space import load_search_space

    space = load_search_space(os.path.join(REPO, "configs", "sweeps", "cs_ft_space.yaml"),
                              os.path.join(REPO, "configs", "cs_ft.yaml"))
    assert {"SOLVER.BASE_LR", "CITYSCAPES_FT.SCHEDULE.MAX_EPOCHS", "MODEL.BACKBONE.FREEZE_AT"} <= set(space.distributions)
