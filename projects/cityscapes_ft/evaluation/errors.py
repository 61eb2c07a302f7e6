"""Where the AP goes: TIDE's error breakdown (Bolya et al., ECCV 2020) of box or mask predictions.

Each false positive at IoU `pos_thresh` (0.5) is given one cause, tested in this order:
  Loc   its best same-class IoU with any ground truth is in [bg_thresh, pos_thresh];
  Cls   its best IoU with a ground truth of another class is >= pos_thresh;
  Dupe  a same-class ground truth it overlaps >= pos_thresh was already taken by a higher score;
  Bkg   it overlaps no ground truth by more than bg_thresh (0.1), or the image has none;
  Both  anything else (wrong class and poorly localised);
and each ground truth that no prediction matched and no Loc/Cls error could fix is a Miss. The dAP
of a cause is how much the AP at IoU 0.5 rises when those errors alone are fixed (a Loc or Cls error
becomes the true positive of its ground truth, the highest-scored one per ground truth; the others
are removed; a Miss leaves the ground truth count), clipped at 0, in AP points. TIDE's own AP
(101 recall points, classes without ground truth or predictions left out) is the baseline, so the
numbers are comparable with the `tidecv` package's; they are computed here from detectron2's COCO
ground truth and `coco_instances_results.json` records, with pycocotools' IoU.

Per class, the same fixes give the change of that class's AP (a fixed Cls error counts for the
ground truth's class). Per-class values do not add up to the overall ones, which average classes.
"""
from collections import OrderedDict, defaultdict

import numpy as np
from pycocotools import mask as mask_util

TIDE_ERRORS = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
_GEOMETRY = {"bbox": "bbox", "segm": "segmentation"}


def coco_shape(ann, image, task):
    """A COCO record's box, or its mask as one RLE (polygons merged), as TIDE compares them."""
    if task == "bbox":
        return ann["bbox"]
    seg = ann["segmentation"]
    if isinstance(seg, list):
        return mask_util.merge(mask_util.frPyObjects(seg, image["height"], image["width"]))
    if isinstance(seg["counts"], list):
        return mask_util.frPyObjects(seg, image["height"], image["width"])
    return seg


class _Outcome:
    """What one run over the images found: true positives, each error with its original and fixed
    data point, and the ground-truth count per class; insertion orders as TIDE keeps them."""

    def __init__(self):
        self.points = []  # (class, pred_id, score, is_tp) of every counted prediction, in order
        self.errors = []  # [kind, pred_id, original (cls, score) | None, fixed]
        self.num_gt = defaultdict(int)


def _run(coco_gt, records, task, pos_thresh, bg_thresh, max_dets):
    images = OrderedDict((im["id"], im) for im in coco_gt["images"])
    gt_by_image = defaultdict(list)
    for ann in coco_gt["annotations"]:
        gt_by_image[ann["image_id"]].append(ann)
    preds_by_image = defaultdict(list)
    key = _GEOMETRY[task]
    for pred_id, r in enumerate(records):
        if key in r:
            preds_by_image[r["image_id"]].append((pred_id, r))
    out = _Outcome()
    for image_id, image in images.items():
        _run_image(out, image, gt_by_image[image_id], preds_by_image.get(image_id, []), task, pos_thresh,
                   bg_thresh, max_dets)
    return out


def coco_iou(dets, gts, crowd):
    """pycocotools' IoU (IoA against crowd regions) of two lists of shapes, as a (dets, gts) array."""
    if not dets or not gts:
        return np.zeros((len(dets), len(gts)))
    return np.asarray(mask_util.iou(dets, gts, crowd), dtype=np.float64).reshape(len(dets), len(gts))


def _run_image(out, image, anns, preds, task, pos_thresh, bg_thresh, max_dets):
    gts = [a for a in anns if not a.get("iscrowd", 0)]
    crowds = [a for a in anns if a.get("iscrowd", 0)]
    for g in gts:
        out.num_gt[g["category_id"]] += 1
    if not preds:
        out.errors.extend(["Miss", None, None, g["category_id"]] for g in gts)
        return
    # stable: equal scores keep the results file's order
    order = sorted(range(len(preds)), key=lambda i: -preds[i][1]["score"])[:max_dets]
    preds = [preds[i] for i in order]
    key = _GEOMETRY[task]
    shapes = [p[key] for _, p in preds]
    pred_cls = np.array([p["category_id"] for _, p in preds])
    gt_cls = np.array([g["category_id"] for g in gts], dtype=pred_cls.dtype)
    iou = coco_iou(shapes, [coco_shape(g, image, task) for g in gts], [False] * len(gts))
    same_cls = pred_cls[:, None] == gt_cls[None, :]
    iou_same = iou * same_cls

    # Greedy matching by score: each prediction takes its best still-free same-class ground truth.
    matched_gt = np.full(len(gts), -1)
    state = ["fp"] * len(preds)  # "tp", "fp" or "ignored"
    free = iou_same.copy()
    for i in range(len(preds)):
        if not gts:
            break
        j = int(np.argmax(free[i]))
        if free[i, j] >= pos_thresh:
            state[i], matched_gt[j] = "tp", i
            free[:, j] = 0
    # Unmatched predictions inside a same-class crowd region are not counted (they still get a cause).
    for c in crowds:
        ioa = coco_iou(shapes, [coco_shape(c, image, task)], [True])[:, 0]
        for i in range(len(preds)):
            if state[i] != "tp" and ioa[i] > pos_thresh and c["category_id"] == pred_cls[i]:
                state[i] = "ignored"

    used = matched_gt >= 0
    iou_other_cls = iou * ~same_cls
    iou_same_used = iou_same * used[None, :]
    best = {}  # gt index -> (score, pred_id) of its best Loc/Cls error, the one a fix makes positive
    fixable = []  # (error row, gt index, fixed class)
    for i, (pred_id, p) in enumerate(preds):
        cls, score = int(pred_cls[i]), p["score"]
        if state[i] == "tp":
            out.points.append((cls, pred_id, score, True))
            continue
        original = None
        if state[i] == "fp":
            original = (cls, score)
            out.points.append((cls, pred_id, score, False))
        error = [None, pred_id, original, None]
        out.errors.append(error)
        if not gts:
            error[0] = "Bkg"
            continue
        j = int(np.argmax(iou_same[i]))
        if bg_thresh <= iou_same[i, j] <= pos_thresh:
            error[0] = "Loc"
            fixable.append((error, j, cls, score))
            continue
        j = int(np.argmax(iou_other_cls[i]))
        if iou_other_cls[i, j] >= pos_thresh:
            error[0] = "Cls"
            fixable.append((error, j, int(gt_cls[j]), score))
            continue
        j = int(np.argmax(iou_same_used[i]))
        if iou_same_used[i, j] >= pos_thresh:
            error[0] = "Dupe"
            continue
        error[0] = "Bkg" if iou[i].max() <= bg_thresh else "Both"
    for error, j, fixed_cls, score in fixable:
        if not used[j] and (j not in best or best[j][0] < score):
            best[j] = (score, error[1])
    for error, j, fixed_cls, score in fixable:
        # fixed: a true positive of the ground truth's class, for the best error of a free ground truth
        if not used[j] and best[j][1] == error[1]:
            error[3] = (fixed_cls, score)
    for j, g in enumerate(gts):
        if not used[j] and j not in best:
            out.errors.append(["Miss", None, None, g["category_id"]])


def _tide_ap(scores, is_tp, num_gt):
    """TIDE's AP of one class, in points: interpolated precision at 101 recall points."""
    if num_gt <= 0:
        return 0.0
    if not scores:
        return 0.0
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    tp = np.asarray(is_tp, dtype=bool)[order]
    n_tp, n_fp = np.cumsum(tp), np.cumsum(~tp)
    precision = n_tp / (n_tp + n_fp)
    recall = n_tp / num_gt
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, np.arange(101) / 100, side="left")
    y = [float(precision[k]) if k < len(precision) else 0.0 for k in at]
    return sum(y) / len(y) * 100


def _class_aps(out, fix=None):
    """AP per class with the errors of kind `fix` fixed (None: as predicted). Data points go in as
    TIDE adds them when it fixes errors (errors first, then true positives), which decides the order
    of equal scores."""
    num_gt = dict(out.num_gt)
    classes = list(num_gt)
    per_class = defaultdict(lambda: ([], []))

    def push(cls, score, tp):
        if cls not in num_gt:
            num_gt[cls] = 0
            classes.append(cls)
        per_class[cls][0].append(score)
        per_class[cls][1].append(tp)

    if fix is None:
        for cls, _, score, tp in out.points:
            push(cls, score, tp)
    else:
        for kind, _, original, fixed in out.errors:
            if kind != fix:
                if original is not None:
                    push(*original, False)
            elif kind == "Miss":
                num_gt[fixed] -= 1
            elif fixed is not None:
                push(*fixed, True)
        for cls, _, score, tp in out.points:
            if tp:
                push(cls, score, tp)
    aps = OrderedDict()
    for cls in classes:
        scores, tps = per_class[cls] if cls in per_class else ([], [])
        if scores or num_gt[cls] > 0:  # TIDE leaves out classes with neither
            aps[cls] = _tide_ap(scores, tps, num_gt[cls])
    return aps


def _mean(values):
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def tide_error_breakdown(coco_gt, records, task, pos_thresh=0.5, bg_thresh=0.1, max_dets=100):
    """TIDE's main errors of `records` (detectron2's COCO results) against `coco_gt` (a COCO-format
    dict, as detectron2's `convert_to_coco_dict` makes it), for task "bbox" or "segm".

    Returns {"AP50": TIDE's AP at pos_thresh, "Cls", "Loc", "Both", "Dupe", "Bkg", "Miss": dAP,
    then per class "AP50-<name>", "<error>-<name>"}, all in AP points."""
    if task not in _GEOMETRY:
        raise ValueError(f"task must be 'bbox' or 'segm', not {task!r}")
    names = {c["id"]: c["name"] for c in coco_gt.get("categories", [])}
    out = _run(coco_gt, records, task, pos_thresh, bg_thresh, max_dets)
    base = _class_aps(out)
    ap_key = f"AP{int(round(pos_thresh * 100))}"
    result = OrderedDict([(ap_key, _mean(base.values()))])
    fixed = {kind: _class_aps(out, kind) for kind in TIDE_ERRORS}
    for kind in TIDE_ERRORS:
        result[kind] = max(_mean(fixed[kind].values()) - result[ap_key], 0.0)
    for cat_id in sorted(names):
        name = names[cat_id]
        result[f"{ap_key}-{name}"] = base.get(cat_id, float("nan"))
        for kind in TIDE_ERRORS:
            if cat_id in base:
                result[f"{kind}-{name}"] = max(fixed[kind].get(cat_id, 0.0) - base[cat_id], 0.0)
            else:
                result[f"{kind}-{name}"] = float("nan")
    return result
