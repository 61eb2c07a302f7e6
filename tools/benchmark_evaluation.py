#!/usr/bin/env python
"""Dataset reload and evaluation speed of cityscapes-ft against plain detectron2, measured in the
same run on a synthetic Cityscapes-format val set; writes <output>/benchmark_evaluation.json.

    python tools/benchmark_evaluation.py [--num-images 500 --width 2048 --height 1024]
"""
from cityscapes_ft.benchmarks.evaluation_speed import main

if __name__ == "__main__":
    main()
