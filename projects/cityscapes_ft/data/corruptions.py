"""The 15 image corruptions of Hendrycks & Dietterich (2019) at severities 1-5, from the
`imagecorruptions` package, as Michaelis et al. (2019) use them for Cityscapes-C: each image's
corruption is seeded from (corruption, severity, image), so a rerun gives the same pixels, the
same as the package's own `corrupt` gives after `np.random.seed(seed)`. Glass blur is ours
(`glass_blur`): the package's pixels, about 100 times faster, so that it does not bound the benchmark."""
import inspect
import zlib

import numpy as np
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
import imagecorruptions.corruptions as _corruptions
import torch
from imagecorruptions import corrupt, get_corruption_names
from skimage.filters import gaussian as _skimage_gaussian

CORRUPTIONS = tuple(get_corruption_names("common"))  # the 15 of the benchmark, in the paper's order
SEVERITIES = (1, 2, 3, 4, 5)


def _gaussian_with_multichannel(image, *args, multichannel=None, **kwargs):
    if multichannel is not None:
        kwargs.setdefault("channel_axis", -1 if multichannel else None)
    return _skimage_gaussian(image, *args, **kwargs)


# imagecorruptions 1.1.2 calls skimage's gaussian(..., multichannel=True) (glass_blur,
# gaussian_blur), a keyword scikit-image removed in 0.20 in favour of channel_axis=-1, its exact
# equivalent; no scikit-image with `multichannel` has wheels for Python 3.11. The package's module
# gets a gaussian that translates it: the one change to a third-party module in this project.
if "multichannel" not in inspect.signature(_skimage_gaussian).parameters:
    _corruptions.gaussian = _gaussian_with_multichannel


# (sigma, max_delta, iterations) of glass blur at severities 1-5: Hendrycks & Dietterich's values,
# as imagecorruptions 1.1.2 sets them.
_GLASS_BLUR = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))


def glass_blur(image, severity):
    """The package's glass blur, pixel for pixel for the same state of numpy's global RNG, without
    its per-pixel Python loop (about 100 s for one 2048x1024 image at severity 3 here, 1 s this way).

    Between two Gaussian blurs, the package walks the pixels from the bottom right and, for each,
    draws (dx, dy) in [-d, d) and gives the pixel the value at (row + dy, col + dx) (its tuple swap
    of two numpy views copies one way only). A source that the walk has already passed holds its new
    value, so a pixel ends with the start-of-pass value at the end of its chain of such sources:
    the chains are followed for all pixels at once. One randint call of the same length draws the
    numbers that the package's one call per pixel draws."""
    sigma, d, iterations = _GLASS_BLUR[int(severity) - 1]
    x = np.uint8(_corruptions.gaussian(np.asarray(image) / 255.0, sigma=sigma, multichannel=True) * 255)
    height, width = x.shape[:2]
    rows = np.arange(height - d, d, -1)[:, None]  # the walk's order: rows, then columns, from the end
    cols = np.arange(width - d, d, -1)[None, :]
    target = (rows * width + cols).ravel()
    flat = x.reshape(height * width, -1)
    source_of = np.zeros(height * width, dtype=np.int64)
    passed_of = np.zeros(height * width, dtype=bool)
    for _ in range(iterations):
        dx, dy = np.random.randint(-d, d, size=(target.size, 2)).T
        src_rows, src_cols = rows + dy.reshape(rows.size, cols.size), cols + dx.reshape(rows.size, cols.size)
        walked = (src_rows > d) & (src_rows <= height - d) & (src_cols > d) & (src_cols <= width - d)
        passed = walked & ((src_rows > rows) | ((src_rows == rows) & (src_cols > cols)))
        source_of[target] = (src_rows * width + src_cols).ravel()
        passed_of[target] = passed.ravel()
        node = target.copy()
        while True:
            follow = passed_of[node]
            if not follow.any():
                break
            node[follow] = source_of[node[follow]]
        flat[target] = flat[source_of[node]]
    return np.clip(_corruptions.gaussian(x / 255.0, sigma=sigma, multichannel=True), 0, 1) * 255


def corruption_seed(corruption, severity, image_key):
    """A seed fixed by (corruption, severity, image): CRC-32 of their names."""
    return zlib.crc32(f"{corruption}/{severity}/{image_key}".encode())


def corrupt_image(image, corruption, severity, seed):
    """`image` (HxWx3 uint8 RGB) corrupted by the package with numpy's global RNG seeded to `seed`
    (the package draws from it); the caller's RNG state is left as it was."""
    if corruption not in get_corruption_names("all"):
        raise ValueError(f"unknown corruption {corruption!r}; one of {', '.join(CORRUPTIONS)}")
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        if corruption == "glass_blur":  # as `corrupt` returns it
            return np.uint8(glass_blur(image, severity))
        return corrupt(np.ascontiguousarray(image), corruption_name=corruption, severity=int(severity))
    finally:
        np.random.set_state(state)


class CorruptedImageMapper:
    """Test-time mapper: reads the image, corrupts it (seeded by its file name), resizes it as the
    test loader does (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST) and returns what the model takes. Runs in
    the loader's worker processes, so DATALOADER.NUM_WORKERS corrupt images in parallel with
    inference."""

    def __init__(self, cfg, corruption, severity):
        self.corruption, self.severity = corruption, int(severity)
        self.image_format = cfg.INPUT.FORMAT
        self.augmentations = T.AugmentationList(utils.build_augmentation(cfg, is_train=False))

    def __call__(self, dataset_dict):
        d = dict(dataset_dict)
        image = utils.read_image(d["file_name"], format="RGB")
        key = d.get("image_id", d["file_name"])
        image = corrupt_image(image, self.corruption, self.severity, corruption_seed(self.corruption, self.severity, key))
        if self.image_format == "BGR":
            image = image[:, :, ::-1]
        aug = T.AugInput(np.ascontiguousarray(image))
        self.augmentations(aug)
        d["image"] = torch.as_tensor(np.ascontiguousarray(aug.image.transpose(2, 0, 1)))
        d.pop("annotations", None)
        return d
