"""Printing evaluation results as tables."""
from collections import OrderedDict
from collections.abc import Mapping

from tabulate import tabulate

from .errors import TIDE_ERRORS

ERRORS_TASK = "errors"  # results["errors"][task]: TIDE's breakdown (evaluation/errors.py)

_TITLES = {
    "cityscapes": "Official Cityscapes instance-level metric (cityscapesscripts), mask",
    "bbox": "COCO-style box AP (pycocotools)",
    "segm": "COCO-style mask AP (pycocotools)",
}


def flat_metric_tasks(results):
    """The results with the error breakdown's nested tasks ("errors": {"bbox": {...}}) spelled as
    tasks of their own ("errors/bbox"), so that every value is {metric: number}, as detectron2's
    print_csv_format takes them."""
    out = OrderedDict()
    for task, res in results.items():
        if task.startswith(ERRORS_TASK) and all(isinstance(v, Mapping) for v in res.values()):
            out.update((f"{task}/{sub}", v) for sub, v in res.items())
        else:
            out[task] = res
    return out


def format_error_tables(errors, class_names) -> str:
    """TIDE's breakdown ({task: {"AP50", "Cls", ...}}): one overall table, one per class per task."""
    headers = ["AP50"] + list(TIDE_ERRORS)
    blocks = ["TIDE error breakdown: dAP (AP50 points) gained by fixing each error type:",
              tabulate([[task] + [res.get(k) for k in headers] for task, res in errors.items()],
                       headers=["task"] + headers, floatfmt=".2f", tablefmt="pipe", missingval="nan")]
    for task, res in errors.items():
        blocks.append(f"{task} per class:")
        blocks.append(tabulate([[c] + [res.get(f"{k}-{c}") for k in headers] for c in class_names],
                               headers=["class"] + headers, floatfmt=".2f", tablefmt="pipe", missingval="nan"))
    blocks.append("")
    return "\n".join(blocks)


def format_results_tables(results, class_names) -> str:
    """results: {task: {metric: value}} as the evaluator returns; one overall and one per-class
    table per task."""
    blocks = []
    for task, res in results.items():
        if task.startswith(ERRORS_TASK):
            blocks.append(format_error_tables(res, class_names))
            continue
        overall = [(k, v) for k, v in res.items() if "-" not in k]
        blocks.append(_TITLES.get(task, task) + ":")
        blocks.append(tabulate([[v for _, v in overall]], headers=[k for k, _ in overall],
                               floatfmt=".3f", tablefmt="pipe"))
        per_class = []
        for name in class_names:
            row = [name] + [res.get(f"{m}-{name}") for m in ("AP", "AP50") if f"{m}-{name}" in res]
            per_class.append(row)
        headers = ["class"] + [m for m in ("AP", "AP50") if f"{m}-{class_names[0]}" in res]
        blocks.append(tabulate(per_class, headers=headers, floatfmt=".3f", tablefmt="pipe",
                               missingval="nan"))
        blocks.append("")
    return "\n".join(blocks)
