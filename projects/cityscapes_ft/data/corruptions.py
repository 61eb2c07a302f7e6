"""The 15 image corruptions of Hendrycks & Dietterich (2019) at severities 1-5, from the
`imagecorruptions` package, as Michaelis et al. (2019) use them for Cityscapes-C: each image's
corruption is seeded from (corruption, severity, image), so a rerun gives the same pixels, the
same as the package's own `corrupt` gives after `np.random.seed(seed)`."""
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
