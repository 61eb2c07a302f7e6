#!/usr/bin/env python
"""Seconds per training iteration of cityscapes-ft's trainer against detectron2's DefaultTrainer
on the same config and data, measured in the same run, and the frozen-backbone speed-up; writes
<output>/benchmark_training.json.

    python tools/benchmark_training.py                      # CPU, the demo config
    python tools/benchmark_training.py --config-file configs/cs_ft.yaml --variants ours,ours_amp \
        --data-root datasets MODEL.DEVICE cuda MODEL.WEIGHTS ""   # GPU: full resolution, AMP
"""
from cityscapes_ft.benchmarks.training_speed import main

if __name__ == "__main__":
    main()
