"""cityscapesscripts' official instance evaluation, with the per-image work spread over processes.

The per-image steps (writing the prediction masks, reading the ground-truth instances, matching)
are cityscapesscripts' own functions run in worker processes; the matches are gathered in image
order and scored by its own evaluateMatches/computeAverages, so the numbers are those of
`evaluateImgLists` on the same files. No ground-truth cache is shared: every evaluation reads the
ground truth it is given.
"""
import contextlib
import io
import multiprocessing as mp
import os
from collections import OrderedDict

import pycocotools.mask as mask_util
from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as cs_eval
from cityscapesscripts.evaluation.instances2dict import instances2dict
from PIL import Image


def write_cityscapes_prediction(pred_dir, stem, pred, label_ids):
    """One `<stem>_pred.txt` listing a PNG mask, the Cityscapes label id and the score per line."""
    txt = os.path.join(pred_dir, stem + "_pred.txt")
    with open(txt, "w") as f:
        for i, (cls, score, rle) in enumerate(zip(pred["classes"], pred["scores"], pred["masks"])):
            png = f"{stem}_{i}.png"
            Image.fromarray(mask_util.decode(rle).astype(bool)).save(os.path.join(pred_dir, png), compress_level=1)
            f.write(f"{png} {label_ids[cls]} {score}\n")
    return txt


def _match_one_image(job):
    stem, gt_file, pred, pred_dir, label_ids = job
    args = cs_eval.args
    txt = write_cityscapes_prediction(pred_dir, stem, pred, label_ids)
    gt_instances = instances2dict([gt_file])[gt_file]
    with Image.open(gt_file) as gt_image:
        gt, preds = cs_eval.assignGt2Preds(
            cs_eval.filterGtInstances(gt_instances, args), gt_image, cs_eval.readPredInfo(txt, args), args
        )
    return gt_file, {"groundTruth": gt, "prediction": preds}


def evaluate_official(jobs, pred_dir, export_file, workers=None):
    """jobs: (stem, absolute gt instanceIds path, prediction dict, label ids) per image.
    Returns cityscapesscripts' averages dict (allAp, allAp50%, classes)."""
    args = cs_eval.args
    args.predictionPath = os.path.abspath(pred_dir)
    args.predictionWalk = None
    args.exportFile = export_file
    args.JSONOutput = False
    args.quiet = True
    args.colorized = False
    cs_eval.setInstanceLabels(args)
    jobs = [(stem, gt, pred, args.predictionPath, label_ids) for stem, gt, pred, label_ids in jobs]
    workers = min(workers or os.cpu_count() or 1, len(jobs)) or 1
    if workers > 1:
        # fork: the workers inherit cityscapesscripts' module-level args set above.
        with mp.get_context("fork").Pool(workers) as pool:
            results = pool.map(_match_one_image, jobs, chunksize=max(1, len(jobs) // (workers * 8)))
    else:
        results = [_match_one_image(j) for j in jobs]
    matches = OrderedDict(results)
    with contextlib.redirect_stdout(io.StringIO()):
        ap = cs_eval.evaluateMatches(matches, args)
        averages = cs_eval.computeAverages(ap, args)
        cs_eval.writeDict2JSON(cs_eval.prepareJSONDataForResults(averages, ap, args), export_file)
    return averages
