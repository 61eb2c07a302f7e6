"""Predicted full-image masks to COCO RLE and to the small crops the official matching needs, in
time proportional to each mask's bounding box rather than to the image.

`pycocotools.mask.encode` wants a column-major copy of every full-resolution mask (a 2048x1024
transpose per mask is most of the cost of encoding a Cityscapes prediction). Here each mask's
rows and columns are found first; the run lengths of the box's columns are computed with numpy
and the image around the box enters as one run of zeros; pycocotools then compresses those
counts (`frPyObjects`), so the RLE is the one `encode` gives, byte for byte.
"""
from dataclasses import dataclass

import numpy as np
import pycocotools.mask as mask_util


@dataclass
class MaskCrop:
    """A mask's bounding box (x0, y0, width, height) and its pixels there, bit-packed."""

    x0: int
    y0: int
    width: int
    height: int
    packed: np.ndarray

    def pixels(self):
        """The (height, width) boolean crop."""
        n = self.width * self.height
        return np.unpackbits(self.packed, count=n).reshape(self.height, self.width).astype(bool)


def _rows_with_pixels(masks):
    """(N, H) booleans: which rows of each mask have a pixel (a 64-bit scan where widths allow)."""
    n, h, w = masks.shape
    if w % 8 == 0 and masks.flags.c_contiguous:
        return masks.view(np.uint64).reshape(n, h, w // 8).any(axis=2)
    return masks.any(axis=2)


def _counts_of_crop(crop, x0, y0, height, width):
    """Uncompressed COCO RLE counts (column-major, starting with zeros) of an image of size
    (height, width) that is zero outside `crop`, placed at (x0, y0)."""
    h, w = crop.shape
    band = np.zeros((w, h + 1), dtype=np.uint8)  # each crop column, then one zero for the gap
    band[:, :h] = crop.T
    v = band.ravel()
    change = np.flatnonzero(v[1:] != v[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [v.size]))
    lengths = ends - starts
    # a gap zero stands for the (height - h) zeros between one crop column and the next
    gaps = ends // (h + 1) - starts // (h + 1)
    lengths = lengths + np.where(v[starts] == 0, gaps * (height - h - 1), 0)
    counts = lengths.tolist()
    leading = x0 * height + y0
    if v[0] == 0:
        counts[0] += leading
    else:
        counts.insert(0, leading)
    counts[-1] += height * width - sum(counts)  # the band ends with a zero run: the rest of the image
    # A crop as tall as the image has no gap: its empty runs go, and the runs around them merge.
    merged, join = counts[:1], False
    for c in counts[1:]:
        if c == 0:
            join = True
        elif join:
            merged[-1] += c
            join = False
        else:
            merged.append(c)
    return merged


def encode_masks(masks):
    """masks: (N, H, W) boolean numpy array. Returns (RLE dicts with str counts, as detectron2's
    `instances_to_coco_json` writes them; MaskCrop of each, None for an empty mask)."""
    masks = np.ascontiguousarray(masks, dtype=bool)
    n, height, width = masks.shape
    rows = _rows_with_pixels(masks)
    rles, crops = [], []
    for i in range(n):
        ys = np.flatnonzero(rows[i])
        if ys.size == 0:
            counts, crop = [height * width], None
        else:
            y0, y1 = int(ys[0]), int(ys[-1]) + 1
            xs = np.flatnonzero(masks[i, y0:y1].any(axis=0))
            x0, x1 = int(xs[0]), int(xs[-1]) + 1
            pixels = masks[i, y0:y1, x0:x1]
            counts = _counts_of_crop(pixels, x0, y0, height, width)
            crop = MaskCrop(x0, y0, x1 - x0, y1 - y0, np.packbits(pixels))
        rle = mask_util.frPyObjects({"counts": counts, "size": [height, width]}, height, width)
        rle["counts"] = rle["counts"].decode("utf-8")
        rles.append(rle)
        crops.append(crop)
    return rles, crops
