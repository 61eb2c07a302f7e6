#!/usr/bin/env python
"""The main job on its embedded default: synthetic Cityscapes-format data, CPU fine-tuning for a
few minutes, official + COCO evaluation, prediction pictures. Outputs in output/cs_ft_cpu_demo/.

    python tools/run_synthetic_demo.py [--num-gpus 2] [KEY VALUE ...]
"""
from cityscapes_ft.synthetic_demo import main

if __name__ == "__main__":
    main()
