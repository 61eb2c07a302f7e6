#!/usr/bin/env python
"""Error analysis of a run's saved evaluation, without running the model: TIDE's error breakdown,
confusion matrices and precision-recall curves (OUTPUT_DIR/inference/<dataset>/error_analysis/),
added to the evaluation's JSON and to OUTPUT_DIR/report.html.

  python tools/analyze_errors.py OUTPUT_DIR [--iou 0.5] [--score 0.5]
"""
import argparse

import cityscapes_ft  # noqa: F401  (registers the datasets)
from cityscapes_ft.data import CITYSCAPES_THING_CLASSES
from cityscapes_ft.evaluation import format_results_tables
from cityscapes_ft.evaluation.saved_analysis import analyze_saved_evaluation
from cityscapes_ft.visualization.report import write_run_report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", help="a run's OUTPUT_DIR (holds config.yaml and inference/)")
    parser.add_argument("--iou", type=float, default=0.5, help="confusion matrix: IoU of a match")
    parser.add_argument("--score", type=float, default=0.5, help="confusion matrix: lowest score counted")
    args = parser.parse_args(argv)
    for dataset, errors in analyze_saved_evaluation(args.output_dir, args.iou, args.score).items():
        print(f"{dataset}:\n" + format_results_tables({"errors": errors}, list(CITYSCAPES_THING_CLASSES)))
    print(f"Report: {write_run_report(args.output_dir, list(CITYSCAPES_THING_CLASSES))}")


if __name__ == "__main__":
    main()
