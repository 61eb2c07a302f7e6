"""Printing evaluation results as tables."""
from tabulate import tabulate

_TITLES = {
    "cityscapes": "Official Cityscapes instance-level metric (cityscapesscripts), mask",
    "bbox": "COCO-style box AP (pycocotools)",
    "segm": "COCO-style mask AP (pycocotools)",
}


def format_results_tables(results, class_names) -> str:
    """results: {task: {metric: value}} as the evaluator returns; one overall and one per-class
    table per task."""
    blocks = []
    for task, res in results.items():
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
