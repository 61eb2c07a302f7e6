"""SWEEP_DIR/sweep.html: one self-contained page per sweep: the best trial and its config, the table
of trials, and Optuna's optimisation history, intermediate values (where pruning struck) and
parameter importances (optuna.visualization.matplotlib: plotly is not installed here)."""
import html
import os
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..utils import atomic_open  # noqa: E402
from .page import embed_png  # noqa: E402

SWEEP_REPORT = "sweep.html"
_CSS = """body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;
margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}
tr.best{font-weight:bold}tr.PRUNED{color:#777}tr.FAIL{color:#b00}img{max-width:48%;margin:0.3em}"""
# Optuna's plots, by file: (title, function name in optuna.visualization.matplotlib, least number of
# complete trials it needs).
_PLOTS = (("Optimisation history", "plot_optimization_history", 1, "history"),
          ("Intermediate values (periodic evaluations; pruned trials stop early)",
           "plot_intermediate_values", 1, "intermediate"),
          ("Parameter importances", "plot_param_importances", 2, "importances"))


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return html.escape(str(value))


def _plots(study, sweep_dir):
    """Optuna's plots as PNG files in SWEEP_DIR/plots/; a plot Optuna cannot draw yet says why."""
    import optuna.visualization.matplotlib as ovm

    complete = sum(1 for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE")
    reported = any(t.intermediate_values for t in study.get_trials(deepcopy=False))
    folder = os.path.join(sweep_dir, "plots")
    os.makedirs(folder, exist_ok=True)
    parts = []
    for title, name, needed, stem in _PLOTS:
        if complete < needed or (stem == "intermediate" and not reported):
            parts.append(f"<h3>{html.escape(title)}</h3><p>Not yet: needs {needed} complete trial(s)"
                         + (" with periodic evaluations" if stem == "intermediate" else "") + ".</p>")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                ax = getattr(ovm, name)(study)
            figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            path = os.path.join(folder, f"{stem}.png")
            figure.savefig(path, dpi=80)
            plt.close(figure)
            parts.append(f"<h3>{html.escape(title)}</h3>" + embed_png(path, title))
        except Exception as e:  # e.g. importances of parameters that never varied
            parts.append(f"<h3>{html.escape(title)}</h3><p>Optuna could not draw it: {html.escape(str(e))}</p>")
    return "\n".join(parts)


def write_sweep_report(study, sweep_dir, rows, metric, mode, best_config=None) -> str:
    """Builds SWEEP_DIR/sweep.html from the study and the rows of trials.csv; returns its path."""
    best = study.best_trial if any(r["state"] == "COMPLETE" for r in rows) else None
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>sweep {html.escape(study.study_name)}"
             f"</title><style>{_CSS}</style></head><body><h1>cityscapes-ft sweep '{html.escape(study.study_name)}'"
             f"</h1><p>{html.escape(os.path.abspath(sweep_dir))}: {len(rows)} trials; objective {html.escape(metric)}"
             f" ({'higher' if mode == 'max' else 'lower'} is better), the best of each trial's evaluations.</p>"]
    if best is not None:
        parts.append(f"<h2>Best trial</h2><p class='best'>Trial {best.number}: {html.escape(metric)} "
                     f"{best.value:.6g}, after iteration {best.user_attrs.get('best_iteration')}; "
                     + ", ".join(f"{html.escape(k)} {html.escape(repr(v))}" for k, v in best.params.items())
                     + f". Its model: {html.escape(os.path.join(best.user_attrs.get('output_dir', ''), 'model_best.pth'))}"
                     + (f"; its config: {html.escape(best_config)}" if best_config else "") + ".</p>")
    else:
        parts.append("<h2>Best trial</h2><p>No trial has completed yet.</p>")
    if rows:
        columns = list(rows[0])
        parts.append("<h2>Trials</h2><table class='trials'><tr>"
                     + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>")
        for row in rows:
            css = row["state"] + (" best" if best is not None and row["trial"] == best.number else "")
            parts.append(f"<tr class='{css}'>" + "".join(f"<td>{_cell(row[c])}</td>" for c in columns) + "</tr>")
        parts.append("</table>")
    parts.append("<h2>Optuna's plots</h2>" + _plots(study, sweep_dir))
    parts.append("</body></html>")
    path = os.path.join(sweep_dir, SWEEP_REPORT)
    with atomic_open(path, "w") as f:
        f.write("\n".join(parts))
    return path
