"""What a sweep leaves in SWEEP_DIR besides the trials' folders: trials.csv / trials.json (a row
per trial), best_config.yaml (the best trial's whole config, for tools/train_net.py) and
sweep.html (the table, Optuna's plots). Rewritten, whole, after every trial by any worker."""
import csv
import io
import os

from ...config import load_cityscapes_ft_cfg
from ...utils import atomic_open, atomic_write_json
from ...visualization.sweep_report import write_sweep_report

BEST_CONFIG, TRIALS_CSV, TRIALS_JSON = "best_config.yaml", "trials.csv", "trials.json"


def trial_dir(sweep_dir: str, number: int) -> str:
    return os.path.join(sweep_dir, f"trial_{number}")


def trial_rows(study, n_trials: int):
    """A dict per trial of the sweep (numbers 0..n_trials-1), in order."""
    rows = []
    params = []
    for trial in study.get_trials(deepcopy=False):
        params += [k for k in trial.params if k not in params]
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if trial.number >= n_trials:
            continue
        attrs = trial.user_attrs
        steps = sorted(trial.intermediate_values)
        row = {"trial": trial.number, "state": trial.state.name, "value": trial.value}
        row.update({k: trial.params.get(k) for k in params})
        row.update({
            "best_iteration": attrs.get("best_iteration"),
            "evaluations": len(steps),
            "last_evaluated_iteration": steps[-1] if steps else None,
            "pruned_after_iteration": attrs.get("pruned_after_iteration"),
            "seconds": attrs.get("seconds"),
            "output_dir": attrs.get("output_dir"),
            "error": attrs.get("error"),
        })
        rows.append(row)
    return rows


def write_trials_table(rows, sweep_dir):
    atomic_write_json(os.path.join(sweep_dir, TRIALS_JSON), rows)
    text = io.StringIO()
    if rows:
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with atomic_open(os.path.join(sweep_dir, TRIALS_CSV), "w") as f:
        f.write(text.getvalue())


def write_best_config(study, sweep_dir, metric) -> str:
    """SWEEP_DIR/best_config.yaml: the config.yaml the best complete trial ran (merged, with no
    _BASE_, so it loads from any folder), its OUTPUT_DIR SWEEP_DIR/best and no sweep keys.
    Returns its path, or None while no trial is complete."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return None
    best = study.best_trial
    run_config = os.path.join(trial_dir(sweep_dir, best.number), "config.yaml")
    cfg = load_cityscapes_ft_cfg(run_config)
    cfg.OUTPUT_DIR = os.path.join(sweep_dir, "best")
    cfg.CITYSCAPES_FT.SWEEP.STORAGE, cfg.CITYSCAPES_FT.SWEEP.STUDY, cfg.CITYSCAPES_FT.SWEEP.TRIAL = "", "", -1
    header = [
        f"# The best trial of sweep '{study.study_name}': trial {best.number}, {metric} {best.value:.6g}"
        f" (after iteration {best.user_attrs.get('best_iteration')}).",
        "# Its sampled values: " + ", ".join(f"{k} {v!r}" for k, v in best.params.items()) + ".",
        f"# The whole config it ran ({run_config}), merged (no _BASE_), so it loads from",
        "# any folder; OUTPUT_DIR and the sweep's keys set for a run of its own:",
        f"#   python tools/train_net.py --config-file {os.path.join(sweep_dir, BEST_CONFIG)}",
    ]
    path = os.path.join(sweep_dir, BEST_CONFIG)
    with atomic_open(path, "w") as f:
        f.write("\n".join(header) + "\n" + cfg.dump())
    return path


def write_sweep_outputs(study, sweep_dir, metric, mode, n_trials):
    rows = trial_rows(study, n_trials)
    write_trials_table(rows, sweep_dir)
    best_config = write_best_config(study, sweep_dir, metric)
    write_sweep_report(study, sweep_dir, rows, metric, mode, best_config)
