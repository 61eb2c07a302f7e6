"""One self-contained HTML page per run: config summary, metrics tables, curves, pictures."""
import glob
import html
import json
import os

from ..config import load_cityscapes_ft_cfg
from ..schedule import TrainingSchedule
from ..utils import atomic_open
from .analysis_sections import error_analysis_section, foggy_section, robustness_section
from .curves import plot_training_curves
from .page import embed_png

REPORT_FILE = "report.html"
_CSS = """body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;
margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#eee}td:first-child{text-align:left}img{max-width:100%;margin:0.3em 0}
pre{background:#f6f6f6;padding:1em;overflow:auto;max-height:25em}"""
_TITLES = {"cityscapes": "Official Cityscapes metric (mask)", "bbox": "COCO-style box AP",
           "segm": "COCO-style mask AP"}


def _tables(results, class_names):
    out = []
    for task, res in results.items():
        if task.startswith("errors"):  # TIDE's breakdown: analysis_sections.error_analysis_section
            continue
        overall = [(k, v) for k, v in res.items() if "-" not in k]
        out.append(f"<h3>{html.escape(_TITLES.get(task, task))}</h3><table class='metrics' data-task='{task}'>")
        out.append("<tr>" + "".join(f"<th>{html.escape(k)}</th>" for k, _ in overall) + "</tr>")
        out.append("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for _, v in overall) + "</tr></table>")
        metrics = [m for m in ("AP", "AP50") if any(f"{m}-{c}" in res for c in class_names)]
        out.append(f"<table class='per-class' data-task='{task}'><tr><th>class</th>"
                   + "".join(f"<th>{m}</th>" for m in metrics) + "</tr>")
        for c in class_names:
            out.append(f"<tr><td>{html.escape(c)}</td>"
                       + "".join(f"<td>{_fmt(res.get(f'{m}-{c}'))}</td>" for m in metrics) + "</tr>")
        out.append("</table>")
    return "\n".join(out)


def _schedule_table(schedule):
    """The schedule the run's config.yaml states, as the training log states it."""
    return ("<table class='schedule'>" + "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in schedule.rows()) + "</table>")


def _training_set_table(training_set):
    """The training set per class (OUTPUT_DIR/training_set.json), as the training log states it."""
    rows = "".join(f"<tr><td>{html.escape(c['class'])}</td><td>{c['instances']}</td><td>{c['images']}</td>"
                   f"<td>{c['images_per_pass']:.1f}</td></tr>" for c in training_set["classes"])
    return (f"<h2>Training set</h2><p>{training_set['images']} images, {html.escape(training_set['sampling'])}</p>"
            "<table class='training-set'><tr><th>class</th><th>instances</th><th>images</th>"
            f"<th>images per pass</th></tr>{rows}</table>")


def _stopped_early_section(output_dir):
    """Why the run ended before SOLVER.MAX_ITER (early_stop.json, a sweep's pruned.json) and
    which checkpoint holds its best model."""
    parts = []
    path = os.path.join(output_dir, "early_stop.json")
    if os.path.isfile(path):
        with open(path) as f:
            r = json.load(f)
        best = r.get("best_checkpoint") or os.path.join(output_dir, "model_best.pth")
        parts.append(
            f"<p class='early-stop'>Stopped early after iteration {r['stopped_after_iteration']}: "
            f"{html.escape(r['metric'])} had not improved by more than {r['min_delta']} for {r['patience']} "
            f"evaluations. The best model, {html.escape(r['metric'])} {r['best']:.5g} after iteration "
            f"{r['best_iteration']}, is <b>{html.escape(best)}</b>"
            + ("" if os.path.isfile(best) else " (missing)") + ".</p>")
    path = os.path.join(output_dir, "pruned.json")
    if os.path.isfile(path):
        with open(path) as f:
            r = json.load(f)
        parts.append(f"<p class='pruned'>Pruned by sweep '{html.escape(r['study'])}' (trial {r['trial']}) after "
                     f"iteration {r['pruned_after_iteration']}: {html.escape(r['metric'])} {r['value']:.5g}.</p>")
    return ("<h2>Stopped early</h2>" + "".join(parts)) if parts else ""


def _digest(sha256):
    return f" (SHA-256 <code>{html.escape(sha256)}</code>)" if sha256 else ""


def _fmt(v):
    return "nan" if v is None or v != v else f"{v:.2f}"


def write_run_report(output_dir: str, class_names, max_pictures: int = 4) -> str:
    """Builds OUTPUT_DIR/report.html from what the run left there; returns its path."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>cityscapes-ft run report</title>"
             f"<style>{_CSS}</style></head><body><h1>cityscapes-ft run: {html.escape(os.path.abspath(output_dir))}</h1>"]
    results_files = sorted(glob.glob(os.path.join(output_dir, "eval_results", "*.json")), key=os.path.getmtime)
    if results_files:
        with open(results_files[-1]) as f:
            final = json.load(f)
        parts.append(f"<h2>Evaluation</h2><p>Dataset <b>{html.escape(str(final['dataset']))}</b>, "
                     f"iteration {final['iteration']}, weights {html.escape(str(final['checkpoint']))}"
                     + _digest(final.get("checkpoint_sha256")) + "</p>")
        start = final.get("init_weights") or {}
        if start.get("path"):
            parts.append(f"<p class='init-weights'>Started from {html.escape(start['path'])}"
                         + _digest(start.get("sha256")) + "</p>")
        parts.append(_tables(final["results"], class_names))
        parts.append(error_analysis_section(output_dir, final, class_names))
    else:
        parts.append("<h2>Evaluation</h2><p>No evaluation results yet.</p>")
    parts.append(_stopped_early_section(output_dir))
    parts.append(foggy_section(output_dir))
    parts.append(robustness_section(output_dir))
    metrics = os.path.join(output_dir, "metrics.json")
    if os.path.isfile(metrics) and os.path.getsize(metrics):
        curves = plot_training_curves(metrics, os.path.join(output_dir, "training_curves.png"))
        parts.append("<h2>Training curves</h2>" + embed_png(curves, "training curves"))
    config = os.path.join(output_dir, "config.yaml")
    training_set = os.path.join(output_dir, "training_set.json")
    training_images = None
    if os.path.isfile(training_set):
        with open(training_set) as f:
            training_images = json.load(f)["images"]
    run_cfg = load_cityscapes_ft_cfg(config) if os.path.isfile(config) else None
    if run_cfg is not None and run_cfg.CITYSCAPES_FT.SCHEDULE.UNIT == "iterations" and training_images:
        schedule = TrainingSchedule.of_resolved_config(run_cfg, training_images)
        parts.append("<h2>Training schedule (from config.yaml, in iterations)</h2>")
        parts.append(_schedule_table(schedule))
    pictures = sorted(glob.glob(os.path.join(output_dir, "predictions", "*.png")))[:max_pictures]
    if pictures:
        parts.append("<h2>Predictions (top) and ground truth (bottom)</h2>")
        parts.extend(embed_png(p, os.path.basename(p)) for p in pictures)
    if os.path.isfile(training_set):
        with open(training_set) as f:
            parts.append(_training_set_table(json.load(f)))
    if os.path.isfile(config):
        with open(config) as f:
            parts.append(f"<h2>Config</h2><pre>{html.escape(f.read())}</pre>")
    parts.append("</body></html>")
    path = os.path.join(output_dir, REPORT_FILE)
    with atomic_open(path, "w") as f:
        f.write("\n".join(parts))
    return path
