"""Foggy Cityscapes (Sakaridis et al. 2018): the Cityscapes images with synthetic fog of three
densities, `leftImg8bit_foggy/{split}/{city}/{stem}_leftImg8bit_foggy_beta_{beta}.png`, evaluated
with gtFine's annotations of the same images."""
import os

import numpy as np
from PIL import Image

from .cityscapes import load_cityscapes_ft_instances

FOGGY_BETAS = (0.005, 0.01, 0.02)  # attenuation coefficients of the dataset's three densities
FOGGY_DIR = "leftImg8bit_foggy"


def foggy_dataset_name(split, beta):
    return f"cityscapes_ft_instance_{split}_foggy_beta_{beta}"


def foggy_image_file(root, image_file, beta):
    """The foggy copy of a leftImg8bit image: same split/city/stem under leftImg8bit_foggy/."""
    rel = os.path.relpath(image_file, os.path.join(root, "leftImg8bit"))
    return os.path.join(root, FOGGY_DIR, rel[: -len(".png")] + f"_foggy_beta_{beta}.png")


def load_foggy_cityscapes_instances(root, split, beta):
    """The split's dataset dicts (gtFine annotations) with each image taken from leftImg8bit_foggy/."""
    folder = os.path.join(root, FOGGY_DIR, split)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Foggy Cityscapes: no {folder}; download leftImg8bit_foggy (beta {beta}) "
                                f"into {root} (datasets/README.md)")
    dicts = load_cityscapes_ft_instances(root, split)
    out = []
    for d in dicts:
        foggy = foggy_image_file(root, d["file_name"], beta)
        if not os.path.isfile(foggy):
            raise FileNotFoundError(f"Foggy Cityscapes: {foggy} is missing (the foggy copy of {d['file_name']})")
        out.append(dict(d, file_name=foggy))
    return out


def make_foggy_copy(root, split="val", betas=FOGGY_BETAS):
    """For tests and demos: writes leftImg8bit_foggy/ for a (synthetic) Cityscapes tree with a
    homogeneous fog of transmittance exp(-beta * depth) over a depth growing up the image (the
    Koschmieder model that Foggy Cityscapes uses, with a made-up depth), towards a grey airlight."""
    src = os.path.join(root, "leftImg8bit", split)
    written = []
    for city in sorted(os.listdir(src)):
        for name in sorted(os.listdir(os.path.join(src, city))):
            image = np.asarray(Image.open(os.path.join(src, city, name)).convert("RGB"), dtype=np.float64)
            h = image.shape[0]
            depth = np.linspace(600.0, 20.0, h)[:, None, None]  # metres: far at the top
            for beta in betas:
                t = np.exp(-beta * depth)
                foggy = image * t + 200.0 * (1 - t)
                path = foggy_image_file(root, os.path.join(src, city, name), beta)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                Image.fromarray(np.clip(foggy + 0.5, 0, 255).astype(np.uint8)).save(path)
                written.append(path)
    return written
