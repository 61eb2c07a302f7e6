#!/usr/bin/env python
"""Make a small synthetic dataset in the exact Cityscapes gtFine layout.

    python datasets/make_synthetic_cityscapes.py --output datasets/synthetic/cityscapes \
        --num-train 24 --num-val 8 --width 1024 --height 512 --seed 0
"""
from cityscapes_ft.data.synthetic import main

if __name__ == "__main__":
    main()
