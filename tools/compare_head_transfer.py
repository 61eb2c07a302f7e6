#!/usr/bin/env python
"""Measure what class-aware head transfer buys over plain detectron2 loading, on CPU, with a
stand-in COCO model trained here (see cityscapes_ft.experiments.head_transfer_benefit).

    python tools/compare_head_transfer.py [--pretrain-iters 500 --finetune-iters 150]

Writes output/head_transfer_benefit/head_transfer_benefit.{json,md}.
"""
from cityscapes_ft.experiments.head_transfer_benefit import main

if __name__ == "__main__":
    main()
