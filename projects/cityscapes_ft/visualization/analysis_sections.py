"""The report's error-analysis and robustness sections (HTML), from what the run left on disk:
results["errors"] of the evaluation, its error_analysis/ pictures, OUTPUT_DIR/robustness.json."""
import glob
import html
import json
import os

from ..evaluation.errors import TIDE_ERRORS
from .page import embed_png

ROBUSTNESS_FILE = "robustness.json"
ROBUSTNESS_PLOT = "robustness.png"
_KINDS = {"bbox": "box", "segm": "mask"}


def _fmt(v):
    return "nan" if v is None or v != v else f"{v:.2f}"


def error_analysis_section(output_dir, final, class_names):
    """TIDE tables and the analysis pictures of the evaluation `final` (an eval_results record)."""
    errors = final.get("results", {}).get("errors")
    if not errors:
        return ""
    cols = ["AP50"] + list(TIDE_ERRORS)
    out = ["<h2>Error analysis (TIDE: AP50 points gained by fixing each error type)</h2>",
           "<table class='errors'><tr><th>task</th>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"]
    for task, res in errors.items():
        out.append(f"<tr><td>{_KINDS.get(task, task)}</td>" + "".join(f"<td>{_fmt(res.get(c))}</td>" for c in cols)
                   + "</tr>")
    out.append("</table>")
    for task, res in errors.items():
        out.append(f"<h3>{_KINDS.get(task, task)} errors per class</h3><table class='errors-per-class' "
                   f"data-task='{task}'><tr><th>class</th>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>")
        for name in class_names:
            out.append(f"<tr><td>{html.escape(name)}</td>"
                       + "".join(f"<td>{_fmt(res.get(f'{c}-{name}'))}</td>" for c in cols) + "</tr>")
        out.append("</table>")
    folder = os.path.join(output_dir, "inference", str(final.get("dataset")), "error_analysis")
    for name, title in (("tide_errors", "Error breakdown"), ("confusion_bbox", "Box confusion matrix"),
                        ("confusion_segm", "Mask confusion matrix"), ("pr_curves_bbox", "Box precision-recall"),
                        ("pr_curves_segm", "Mask precision-recall")):
        path = os.path.join(folder, name + ".png")
        if os.path.isfile(path):
            out.append(f"<h3>{title}</h3>" + embed_png(path, name))
    return "\n".join(out)


def robustness_section(output_dir):
    """mPC / rPC and the AP per corruption and severity, from OUTPUT_DIR/robustness.json."""
    path = os.path.join(output_dir, ROBUSTNESS_FILE)
    if not os.path.isfile(path):
        return ""
    with open(path) as f:
        bench = json.load(f)
    out = ["<h2>Robustness to image corruptions (Michaelis et al. 2019)</h2><table class='robustness-summary'>"
           "<tr><th>metric</th><th>clean AP</th><th>mPC</th><th>rPC (%)</th></tr>"]
    for metric, s in bench.get("summary", {}).items():
        out.append(f"<tr><td>{html.escape(metric)}</td><td>{_fmt(s.get('clean'))}</td><td>{_fmt(s.get('mPC'))}</td>"
                   f"<td>{_fmt(s.get('rPC'))}</td></tr>")
    out.append("</table>")
    table = bench.get("table", {})
    severities = sorted({int(s) for per in table.values() for s in per}) if table else []
    if table:
        out.append(f"<h3>{html.escape(bench.get('table_metric', 'AP'))} per corruption and severity</h3>"
                   "<table class='robustness'><tr><th>corruption</th>"
                   + "".join(f"<th>{s}</th>" for s in severities) + "</tr>")
        for name, per in table.items():
            out.append(f"<tr><td>{html.escape(name)}</td>"
                       + "".join(f"<td>{_fmt(per.get(str(s)))}</td>" for s in severities) + "</tr>")
        out.append("</table>")
    plot = os.path.join(output_dir, ROBUSTNESS_PLOT)
    if os.path.isfile(plot):
        out.append(embed_png(plot, "robustness"))
    return "\n".join(out)


def foggy_section(output_dir):
    """AP of each Foggy Cityscapes density evaluated in this run (its eval_results records)."""
    rows = []
    for path in sorted(glob.glob(os.path.join(output_dir, "eval_results", "*foggy_beta_*.json"))):
        with open(path) as f:
            record = json.load(f)
        res = record.get("results", {})
        rows.append((record.get("dataset"), res.get("cityscapes", {}).get("AP"), res.get("segm", {}).get("AP"),
                     res.get("bbox", {}).get("AP")))
    if not rows:
        return ""
    return ("<h2>Foggy Cityscapes</h2><table class='foggy'><tr><th>dataset</th><th>official mask AP</th>"
            "<th>COCO mask AP</th><th>COCO box AP</th></tr>"
            + "".join(f"<tr><td>{html.escape(str(d))}</td><td>{_fmt(a)}</td><td>{_fmt(b)}</td><td>{_fmt(c)}</td></tr>"
                      for d, a, b, c in rows) + "</table>")
