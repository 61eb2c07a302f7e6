"""Class-aware transfer of a detector's class-specific head rows between label spaces.

A COCO checkpoint has 81 classifier rows (80 classes + background, last), 320 box-regression rows
(4 per class) and 80 mask-predictor channels. For a target dataset each class takes the rows of a
source class (Cityscapes' rider takes person's), instead of starting from random as detectron2 and
MMDetection do when the class count differs.
"""
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import WeightsNotAvailable

# The class-specific tensors in detectron2's ROI heads (Cascade's numbered stages included):
# (rows per class, extra rows after the classes: cls_score's background row).
CLASS_SPECIFIC = (
    (re.compile(r"box_predictor(\.\d+)?\.cls_score\.(weight|bias)$"), 1, 1),
    (re.compile(r"box_predictor(\.\d+)?\.bbox_pred\.(weight|bias)$"), 4, 0),
    (re.compile(r"mask_head\.predictor\.(weight|bias)$"), 1, 0),
)


class ClassMapError(WeightsNotAvailable):
    """The class map does not fit the target classes or the checkpoint's classes."""


def resolve_class_map(entries: Sequence, target_classes: Sequence[str],
                      source_classes: Sequence[str]) -> List[Optional[int]]:
    """Per target class, the index of its source class in `source_classes` (None: fresh init).

    entries: one per target class, a source class name, an index (int or digit string), or ""
    for "no source class".
    """
    if len(entries) != len(target_classes):
        raise ClassMapError(
            f"MODEL.HEAD_TRANSFER.CLASS_MAP has {len(entries)} entries but the model has "
            f"{len(target_classes)} classes ({', '.join(target_classes)}): give one source class per "
            "target class, or () for plain detectron2 loading"
        )
    index = {name: i for i, name in enumerate(source_classes)}
    out = []
    for target, entry in zip(target_classes, entries):
        entry = entry.strip() if isinstance(entry, str) else entry
        if entry in ("", None):
            out.append(None)
        elif isinstance(entry, int) or (isinstance(entry, str) and entry.isdigit()):
            i = int(entry)
            if not 0 <= i < len(source_classes):
                raise ClassMapError(
                    f"MODEL.HEAD_TRANSFER.CLASS_MAP maps '{target}' to class id {i}, but the "
                    f"checkpoint's classes are 0..{len(source_classes) - 1}"
                )
            out.append(i)
        elif entry in index:
            out.append(index[entry])
        else:
            raise ClassMapError(
                f"MODEL.HEAD_TRANSFER.CLASS_MAP maps '{target}' to '{entry}', which is not a class "
                f"of the checkpoint (its classes: {', '.join(source_classes)})"
            )
    return out


def _rows(tensor, index: List[int]):
    if isinstance(tensor, np.ndarray):
        return tensor[np.asarray(index)].copy()
    return tensor[torch.as_tensor(index)].clone()


def transfer_class_rows(
    state_dict: Dict, source_indices: List[Optional[int]], num_source_classes: int,
    model_state: Dict,
) -> Tuple[List[str], List[str]]:
    """Rewrites the class-specific tensors of `state_dict` in place for the target classes.

    Rows of target classes without a source (None) are taken from `model_state` (the model's
    fresh initialisation). Returns (transferred keys, keys whose target rows are partly fresh).
    Tensors that already have the target's shape, or are class-agnostic, are left alone.
    """
    num_target = len(source_indices)
    transferred, partly_fresh = [], []

    def model_value(key):
        matches = [k for k in model_state if k.endswith(key.split("roi_heads.")[-1])]
        return model_state[matches[0]].detach().cpu() if matches else None

    for key in list(state_dict):
        kind = next(((n, e) for pattern, n, e in CLASS_SPECIFIC if pattern.search(key)), None)
        if kind is None:
            continue  # class-agnostic (BatchNorm's 0-d num_batches_tracked among them)
        per_class, extra = kind
        value = state_dict[key]
        rows = value.shape[0]
        if rows == per_class * num_target + extra or rows == per_class:
            continue  # already the target's size, or class-agnostic
        if rows != per_class * num_source_classes + extra:
            raise ClassMapError(
                f"Checkpoint tensor '{key}' has {rows} rows; with {num_source_classes} source "
                f"classes it should have {per_class * num_source_classes + extra}. Set "
                "MODEL.HEAD_TRANSFER.SOURCE_CLASSES to the checkpoint's classes"
            )
        fresh = model_value(key)
        pieces = []
        for t, s in enumerate(source_indices):
            if s is None:
                if fresh is None:
                    raise ClassMapError(f"No model tensor matches '{key}' to take fresh rows from")
                piece = fresh[t * per_class : (t + 1) * per_class]
                pieces.append(piece.numpy() if isinstance(value, np.ndarray) else piece.to(value.dtype))
            else:
                pieces.append(_rows(value, list(range(s * per_class, (s + 1) * per_class))))
        if extra:
            pieces.append(_rows(value, [rows - 1]))
        if isinstance(value, np.ndarray):
            state_dict[key] = np.concatenate(pieces, axis=0)
        else:
            state_dict[key] = torch.cat([torch.as_tensor(p) for p in pieces], dim=0)
        transferred.append(key)
        if any(s is None for s in source_indices):
            partly_fresh.append(key)
    return transferred, partly_fresh
