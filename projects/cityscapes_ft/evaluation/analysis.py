"""Error analysis of one evaluation's predictions, without the model: TIDE's error breakdown,
confusion matrices and precision-recall curves, as numbers and pictures.

Used by the evaluator (CITYSCAPES_FT.ERROR_ANALYSIS) and by tools/analyze_errors.py, which reads
an evaluation folder's `coco_instances_results.json` and rebuilds the ground truth from the dataset.
"""
import os
from collections import OrderedDict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..utils import atomic_write_json  # noqa: E402
from .confusion import (  # noqa: E402
    confusion_matrix,
    plot_confusion_matrix,
    plot_precision_recall,
    precision_recall_curves,
)
from .errors import TIDE_ERRORS, tide_error_breakdown  # noqa: E402

ANALYSIS_DIR = "error_analysis"  # inside the evaluation's folder
ANALYSIS_FILE = "error_analysis.json"
TASK_TITLES = {"bbox": "box", "segm": "mask"}


def analyze_errors(coco_gt, records, output_dir, tasks=("bbox", "segm"), iou_thresh=0.5, score_thresh=0.5):
    """TIDE's breakdown per task (returned: {task: {"AP50", "Cls", ..., "Miss", "<error>-<class>"}})
    and, in output_dir/error_analysis/, the confusion matrices, PR curves and error bars as PNGs and
    everything as error_analysis.json."""
    folder = os.path.join(output_dir, ANALYSIS_DIR)
    os.makedirs(folder, exist_ok=True)
    errors = OrderedDict()
    record = {"iou_thresh": iou_thresh, "score_thresh": score_thresh, "tasks": {}}
    for task in tasks:
        kind = TASK_TITLES[task]
        errors[task] = tide_error_breakdown(coco_gt, records, task)
        matrix, names = confusion_matrix(coco_gt, records, task, iou_thresh, score_thresh)
        plot_confusion_matrix(matrix, names, os.path.join(folder, f"confusion_{task}.png"),
                              f"{kind} confusion (IoU >= {iou_thresh:g}, score >= {score_thresh:g})")
        curves = precision_recall_curves(coco_gt, records, task)
        if curves:
            plot_precision_recall(curves, os.path.join(folder, f"pr_curves_{task}.png"),
                                  f"{kind} precision-recall per class (COCOeval, all areas)")
        record["tasks"][task] = {"errors": errors[task], "confusion": {"classes": names, "matrix": matrix.tolist()}}
    if errors:
        plot_error_breakdown(errors, os.path.join(folder, "tide_errors.png"))
    atomic_write_json(os.path.join(folder, ANALYSIS_FILE), record)
    return errors


def plot_error_breakdown(errors, path):
    """TIDE's six dAP per task, side by side."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / len(errors)
    for k, (task, res) in enumerate(errors.items()):
        xs = [i + (k - (len(errors) - 1) / 2) * width for i in range(len(TIDE_ERRORS))]
        bars = ax.bar(xs, [res[e] for e in TIDE_ERRORS], width, label=f"{TASK_TITLES[task]} (AP50 {res['AP50']:.1f})")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(TIDE_ERRORS)), TIDE_ERRORS)
    ax.set_ylabel("dAP (AP50 points)")
    ax.set_title("AP lost to each error type (TIDE)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path

