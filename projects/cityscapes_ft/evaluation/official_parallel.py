"""cityscapesscripts' official instance evaluation, done image by image while predictions arrive.

As each image's predictions come in (as RLE), a worker process matches them against the image's
ground-truth instance ids in memory (`match_image_in_memory`): the records cityscapesscripts'
`assignGt2Preds` makes from written mask PNGs, without writing or reading one, counting each
prediction once over its own bounding box instead of once per ground-truth instance over the whole
image. Every process (every machine) matches its own images while its model predicts the next
ones; only the small match records travel to the main process, which scores them with
cityscapesscripts' own `evaluateMatches`/`computeAverages` in dataset order: the numbers are those
of `evaluateImgLists` on the same predictions written as files (tests hold the two side by side).
"""
import contextlib
import copy
import io
import json
import logging
import multiprocessing as mp
import os
import time
from multiprocessing.pool import AsyncResult

import cv2
import numpy as np
import pycocotools.mask as mask_util
from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as cs_eval
from cityscapesscripts.helpers.labels import id2label as cs_id2label
from cityscapesscripts.helpers.labels import labels as cs_labels
from PIL import Image

from ..utils import atomic_open, cpus_per_local_process

logger = logging.getLogger(__name__)


def _configure(pred_dir=None):
    """cityscapesscripts' module-level evaluation settings, as its command line sets them."""
    args = cs_eval.args
    if pred_dir is not None:
        args.predictionPath = os.path.abspath(pred_dir)
    args.predictionWalk = None
    args.JSONOutput = False
    args.quiet = True
    args.colorized = False
    cs_eval.setInstanceLabels(args)
    return args


def write_prediction_masks(pred_dir, stem, classes, scores, masks, label_ids, compress_level=1):
    """`<stem>_pred.txt` listing one PNG mask, its Cityscapes label id and score per line.
    masks: boolean arrays (H, W), or pycocotools RLE dicts."""
    txt = os.path.join(pred_dir, stem + "_pred.txt")
    with open(txt, "w") as f:
        for i, (cls, score, mask) in enumerate(zip(classes, scores, masks)):
            if isinstance(mask, dict):
                mask = mask_util.decode(mask)
            png = f"{stem}_{i}.png"
            Image.fromarray(np.ascontiguousarray(mask, dtype=bool)).save(os.path.join(pred_dir, png), compress_level=compress_level)
            f.write(f"{png} {label_ids[cls]} {score}\n")
    return txt


# cityscapesscripts' label table, read once: the void ids (ignored in evaluation) and the
# instance classes it evaluates, in its order (setInstanceLabels).
VOID_LABEL_IDS = [label.id for label in cs_labels if label.ignoreInEval]
EVALUATED_LABEL_NAMES = [label.name for label in cs_labels if label.hasInstances and not label.ignoreInEval]


def read_instance_ids(gt_file):
    """A `*_instanceIds.png` as the integer array cityscapesscripts reads (`np.array(Image.open())`);
    OpenCV reads the 16-bit PNG about 3x faster than PIL, which stays the reader for anything else."""
    ids = cv2.imread(gt_file, cv2.IMREAD_UNCHANGED)
    if ids is None or ids.ndim != 2:
        with Image.open(gt_file) as image:
            ids = np.array(image)
    return ids


class GroundTruthInstanceImage:
    """One `*_instanceIds.png`, read once: its instances as cityscapesscripts' `instances2dict` +
    `filterGtInstances` list them, and a compact index of its ids for counting overlaps."""

    def __init__(self, gt_file):
        ids = read_instance_ids(gt_file)
        if ids.ndim != 2 or ids.size == 0 or ids.min() < 0:
            raise ValueError(f"{gt_file}: expected a one-channel image of Cityscapes label and instance ids")
        counts = np.bincount(ids.ravel())
        present = np.flatnonzero(counts)  # ascending, as np.unique orders them
        self.instances = {name: [] for name in EVALUATED_LABEL_NAMES}
        for inst_id in present.tolist():
            label_id = inst_id if inst_id < 1000 else int(inst_id / 1000)
            label = cs_id2label.get(label_id)
            if label is None:
                raise ValueError(f"{gt_file}: pixel value {inst_id} is not a Cityscapes label or instance id")
            if label.name in self.instances:
                self.instances[label.name].append(
                    {"instID": inst_id, "labelID": label_id, "pixelCount": int(counts[inst_id]),
                     "medDist": -1, "distConf": 0.0})
        # ids -> 0..len(present)-1, so one bincount per prediction counts its overlap with everything
        lookup = np.zeros(len(counts), dtype=np.uint8 if len(present) <= 256 else np.int32)
        lookup[present] = np.arange(len(present))
        self.index = lookup[ids]
        self.position = {int(i): k for k, i in enumerate(present.tolist())}
        self.void = [self.position[i] for i in VOID_LABEL_IDS if i in self.position]
        self.shape = ids.shape


def match_image_in_memory(gt_file, image_size, classes, scores, crops, label_ids):
    """What cityscapesscripts' `assignGt2Preds` gives for these predictions written as the official
    files (mask PNGs and a `_pred.txt`), without writing or reading a mask: each prediction is
    counted once, over its own bounding box, against the ground-truth ids. classes: contiguous ids
    (into label_ids); crops: `MaskCrop` of each predicted mask, None where it is empty."""
    gt = GroundTruthInstanceImage(gt_file)
    if tuple(image_size) != gt.shape:
        raise ValueError(f"predictions for {gt_file} are {tuple(image_size)} (height, width); "
                         f"its ground truth is {gt.shape}")
    gt_instances = copy.deepcopy(gt.instances)
    for insts in gt_instances.values():
        for g in insts:
            g["matchedPred"] = []
    predictions = {name: [] for name in EVALUATED_LABEL_NAMES}
    count = 0
    for k, (cls, score, crop) in enumerate(zip(classes, scores, crops)):
        label_id = int(label_ids[cls])
        name = cs_id2label[label_id].name
        if name not in predictions or crop is None:
            continue  # cityscapesscripts skips other labels and empty masks
        mask = crop.pixels()
        region = gt.index[crop.y0 : crop.y0 + crop.height, crop.x0 : crop.x0 + crop.width]
        overlaps = np.bincount(region[mask], minlength=len(gt.position))
        pred = {"imgName": f"{os.path.basename(gt_file)}#{k}", "predID": count, "labelID": label_id,
                "pixelCount": int(mask.sum()), "confidence": float(score),
                "voidIntersection": int(overlaps[gt.void].sum()) if gt.void else 0}
        matched = []
        for num, g in enumerate(gt.instances[name]):
            intersection = int(overlaps[gt.position[g["instID"]]])
            if intersection > 0:
                g_copy, p_copy = dict(g), dict(pred)
                g_copy["intersection"] = p_copy["intersection"] = intersection
                matched.append(g_copy)
                gt_instances[name][num]["matchedPred"].append(p_copy)
        pred["matchedGt"] = matched
        count += 1
        predictions[name].append(pred)
    return {"groundTruth": gt_instances, "prediction": predictions}


class OfficialMatcher:
    """Collects one process's per-image matches; `workers` > 1 runs them in a forked pool, so they
    overlap with inference."""

    def __init__(self, label_ids, workers=None):
        self.label_ids = list(label_ids)
        self.workers = workers or cpus_per_local_process()
        self._pool = None
        self._pending = []  # (gt_file, AsyncResult or match)

    def add(self, gt_file, image_size, classes, scores, crops):
        """classes: contiguous ids; crops: `MaskCrop` of each mask (small to send to a worker)."""
        job = (os.path.abspath(gt_file), tuple(image_size), list(classes), list(scores), crops, self.label_ids)
        if self.workers > 1:
            if self._pool is None:
                self._pool = mp.get_context("fork").Pool(self.workers)
            self._pending.append((job[0], self._pool.apply_async(match_image_in_memory, job)))
        else:
            self._pending.append((job[0], match_image_in_memory(*job)))

    def results(self):
        """[(gt_file, match)] of this process, in the order added; logs progress and ETA while
        the workers finish the images still queued."""
        out, start, last_log = [], time.perf_counter(), time.perf_counter()
        total = len(self._pending)
        try:
            for k, (gt, r) in enumerate(self._pending):
                out.append((gt, r.get() if isinstance(r, AsyncResult) else r))
                now = time.perf_counter()
                if now - last_log > 5 and k + 1 < total:
                    eta = (now - start) / (k + 1) * (total - k - 1)
                    logger.info(f"Official matching: {k + 1}/{total} images ready, ETA {eta:.0f}s")
                    last_log = now
        finally:
            self.close()
        return out

    def close(self):
        """End the worker pool (after the results are in, or on an error)."""
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None


def score_matches(matches, export_file):
    """matches: OrderedDict gt_file -> match, in dataset order. Returns cityscapesscripts' averages
    (from its own `evaluateMatches` and `computeAverages`) and writes its results JSON."""
    args = _configure()
    args.exportFile = export_file
    with contextlib.redirect_stdout(io.StringIO()):
        ap = cs_eval.evaluateMatches(matches, args)
        averages = cs_eval.computeAverages(ap, args)
        results = cs_eval.prepareJSONDataForResults(averages, ap, args)
    write_cityscapes_json(results, export_file)
    return averages


def write_cityscapes_json(data, path):
    """The file cityscapesscripts' writeDict2JSON writes (keys sorted, indent 4, NaN kept, objects as
    their __dict__), written atomically and with numpy scalars as numbers: its own writer fails on
    them with numpy 2."""
    with atomic_open(path) as f:
        f.write(json.dumps(data, default=_plain_json_value, sort_keys=True, indent=4))


def _plain_json_value(value):
    return value.item() if isinstance(value, np.generic) else value.__dict__
