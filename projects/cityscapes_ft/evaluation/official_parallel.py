"""cityscapesscripts' official instance evaluation, done image by image while predictions arrive.

As each image's predictions come in, its masks are written in the official prediction format and
cityscapesscripts' own per-image steps (reading the ground-truth instances, `assignGt2Preds`) run in
a worker process, overlapping with inference. Every process (every machine) matches its own images;
only the small match records travel to the main process, which scores them with cityscapesscripts'
`evaluateMatches`/`computeAverages` in dataset order: the numbers are those of `evaluateImgLists`
on the same files. No ground-truth cache is shared between evaluations or datasets.
"""
import contextlib
import io
import multiprocessing as mp
import os
import shutil
from multiprocessing.pool import AsyncResult

import numpy as np
import pycocotools.mask as mask_util
from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as cs_eval
from cityscapesscripts.evaluation.instances2dict import instances2dict
from PIL import Image

from ..utils import cpus_per_local_process


def _configure(pred_dir):
    args = cs_eval.args
    args.predictionPath = os.path.abspath(pred_dir)
    args.predictionWalk = None
    args.JSONOutput = False
    args.quiet = True
    args.colorized = False
    cs_eval.setInstanceLabels(args)
    return args


def write_prediction_masks(pred_dir, stem, classes, scores, masks, label_ids):
    """`<stem>_pred.txt` listing one PNG mask, its Cityscapes label id and score per line.
    masks: boolean arrays (H, W), or pycocotools RLE dicts."""
    txt = os.path.join(pred_dir, stem + "_pred.txt")
    with open(txt, "w") as f:
        for i, (cls, score, mask) in enumerate(zip(classes, scores, masks)):
            if isinstance(mask, dict):
                mask = mask_util.decode(mask)
            png = f"{stem}_{i}.png"
            Image.fromarray(np.ascontiguousarray(mask, dtype=bool)).save(os.path.join(pred_dir, png), compress_level=1)
            f.write(f"{png} {label_ids[cls]} {score}\n")
    return txt


def write_cityscapes_prediction(pred_dir, stem, pred, label_ids):
    """The same, for a saved prediction record (classes, scores, RLE masks)."""
    return write_prediction_masks(pred_dir, stem, pred["classes"], pred["scores"], pred["masks"], label_ids)


def match_image(gt_file, pred_txt):
    """cityscapesscripts' per-image step: its ground-truth instances assigned to the predictions."""
    args = cs_eval.args
    gt_instances = instances2dict([gt_file])[gt_file]
    with Image.open(gt_file) as gt_image:
        gt, preds = cs_eval.assignGt2Preds(
            cs_eval.filterGtInstances(gt_instances, args), gt_image, cs_eval.readPredInfo(pred_txt, args), args
        )
    return {"groundTruth": gt, "prediction": preds}


def _write_and_match(pred_dir, stem, gt_file, classes, scores, masks, label_ids):
    return match_image(gt_file, write_prediction_masks(pred_dir, stem, classes, scores, masks, label_ids))


class OfficialMatcher:
    """Collects one process's per-image matches; `workers` > 1 runs them in a forked pool."""

    def __init__(self, pred_dir, label_ids, workers=None):
        self.pred_dir = os.path.abspath(pred_dir)
        shutil.rmtree(self.pred_dir, ignore_errors=True)
        os.makedirs(self.pred_dir)
        self.label_ids = label_ids
        self.workers = workers or cpus_per_local_process()
        self._pool = None
        self._pending = []  # (gt_file, AsyncResult or match)
        _configure(self.pred_dir)

    def add(self, stem, gt_file, classes, scores, masks):
        """masks: RLE dicts (small to send to a worker, which writes the PNGs and matches)."""
        _configure(self.pred_dir)  # another evaluator may have changed cityscapesscripts' args
        job = (self.pred_dir, stem, os.path.abspath(gt_file), classes, scores, masks, self.label_ids)
        if self.workers > 1:
            if self._pool is None:
                # fork: the workers inherit cityscapesscripts' module-level args set above.
                self._pool = mp.get_context("fork").Pool(self.workers)
            self._pending.append((job[2], self._pool.apply_async(_write_and_match, job)))
        else:
            self._pending.append((job[2], _write_and_match(*job)))

    def results(self):
        """[(gt_file, match)] of this process, in the order added."""
        out = [(gt, r.get() if isinstance(r, AsyncResult) else r) for gt, r in self._pending]
        self.close()
        return out

    def close(self):
        """Wait for the worker pool and end it."""
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None


def score_matches(matches, pred_dir, export_file):
    """matches: OrderedDict gt_file -> match, in dataset order. Returns cityscapesscripts' averages."""
    args = _configure(pred_dir)
    args.exportFile = export_file
    with contextlib.redirect_stdout(io.StringIO()):
        ap = cs_eval.evaluateMatches(matches, args)
        averages = cs_eval.computeAverages(ap, args)
        cs_eval.writeDict2JSON(cs_eval.prepareJSONDataForResults(averages, ap, args), export_file)
    return averages
