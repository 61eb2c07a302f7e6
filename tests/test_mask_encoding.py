"""Masks encoded from their bounding boxes give pycocotools' own RLE, byte for byte."""
import numpy as np
import pycocotools.mask as mask_util
import pytest

from cityscapes_ft.evaluation.masks import encode_masks


def reference_rles(masks):
    return mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))


def random_masks(rng, n, h, w):
    kind = rng.integers(0, 5)
    if kind == 0:  # scattered pixels, any density
        return rng.random((n, h, w)) < rng.random()
    masks = np.zeros((n, h, w), bool)
    for m in masks:
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        y1, x1 = rng.integers(y0, h) + 1, rng.integers(x0, w) + 1
        if kind == 1:  # a filled box
            m[y0:y1, x0:x1] = True
        elif kind == 2:  # full height or full width, the cases without a gap between columns
            m[:, x0:x1] = True
            m[y0:y1, :] |= rng.random() < 0.5
        elif kind == 3:  # a box with holes
            m[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.7
        else:  # one pixel
            m[y0, x0] = True
    return masks


@pytest.mark.parametrize("seed", range(4))
def test_rle_equals_pycocotools_encode(seed):
    rng = np.random.default_rng(seed)
    for _ in range(150):
        h, w = int(rng.integers(1, 50)), int(rng.integers(1, 50))
        masks = random_masks(rng, 3, h, w)
        masks[0] = False if rng.random() < 0.2 else masks[0]  # empty masks among them
        ours, crops = encode_masks(masks)
        for mask, rle, ref, crop in zip(masks, ours, reference_rles(masks), crops):
            assert rle == {"size": ref["size"], "counts": ref["counts"].decode("utf-8")}
            if not mask.any():
                assert crop is None
                continue
            ys, xs = np.nonzero(mask)
            assert (crop.y0, crop.x0, crop.height, crop.width) == (
                ys.min(), xs.min(), ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
            assert (crop.pixels() == mask[crop.y0 : crop.y0 + crop.height, crop.x0 : crop.x0 + crop.width]).all()


def test_full_resolution_masks_and_widths_not_a_multiple_of_8():
    rng = np.random.default_rng(7)
    for h, w in ((1024, 2048), (375, 1242)):
        masks = random_masks(rng, 4, h, w)
        ours, _ = encode_masks(masks)
        assert [r["counts"] for r in ours] == [r["counts"].decode("utf-8") for r in reference_rles(masks)]
        assert mask_util.area(ours).tolist() == masks.sum(axis=(1, 2)).tolist()
