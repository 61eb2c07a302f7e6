#!/usr/bin/env python
"""Installs the cityscapes_ft package from projects/cityscapes_ft.

Install detectron2 first (see README.md): it is not on PyPI, so it is not listed as a requirement
that pip could resolve on its own.
"""
from setuptools import find_packages, setup

setup(
    name="cityscapes-ft",
    version="0.1.0",
    description="Fine-tune COCO Mask R-CNN on Cityscapes instance segmentation with Detectron2",
    python_requires=">=3.8",
    package_dir={"cityscapes_ft": "projects/cityscapes_ft"},
    packages=["cityscapes_ft"]
    + ["cityscapes_ft." + p for p in find_packages("projects/cityscapes_ft")],
    install_requires=["cityscapesscripts", "pycocotools", "faster-coco-eval", "shapely", "opencv-python-headless"],
    extras_require={"export": ["onnx", "onnxruntime"]},
    entry_points={
        "console_scripts": [
            "cityscapes-ft-synthetic=cityscapes_ft.data.synthetic:main",
        ]
    },
)
