#!/usr/bin/env python
"""Plot losses, learning rate and evaluation metrics from a run's metrics.json, and rebuild its
report.html.

    python tools/plot_curves.py output/cs_ft_cpu_demo [--output curves.png]
"""
import argparse
import os

import cityscapes_ft  # noqa: F401
from cityscapes_ft.data import CITYSCAPES_THING_CLASSES
from cityscapes_ft.errors import user_errors_as_messages
from cityscapes_ft.visualization import plot_training_curves, write_run_report

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a training OUTPUT_DIR")
    parser.add_argument("--output", help="PNG path; default <run_dir>/training_curves.png")
    args = parser.parse_args()
    with user_errors_as_messages():
        out = plot_training_curves(os.path.join(args.run_dir, "metrics.json"),
                                   args.output or os.path.join(args.run_dir, "training_curves.png"))
        print(f"Wrote {out} and {write_run_report(args.run_dir, CITYSCAPES_THING_CLASSES)}")
