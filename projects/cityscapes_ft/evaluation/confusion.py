"""Which class is taken for which: a confusion matrix of the classes plus background, and the
precision-recall curves behind COCO AP, per class, from COCO ground truth and results records."""
import contextlib
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from faster_coco_eval import COCO, COCOeval_faster  # noqa: E402

from .errors import coco_iou, coco_shape  # noqa: E402

BACKGROUND = "background"
PR_IOUS = (0.5, 0.75)


def confusion_matrix(coco_gt, records, task, iou_thresh=0.5, score_thresh=0.5):
    """(matrix, class names): rows are ground-truth classes, columns predicted classes, the last of
    each is background. Per image, predictions scored >= score_thresh are matched by score to the
    free ground truth of their own class with the highest IoU >= iou_thresh (as AP counts a true
    positive; the diagonal), then the rest to free ground truth of any class (confusions). A
    prediction left over is a background row entry, unless it lies inside a crowd region (its area
    overlapped > iou_thresh; not counted); a ground truth left over is a background column entry."""
    cat_ids = sorted(c["id"] for c in coco_gt["categories"])
    names = {c["id"]: c["name"] for c in coco_gt["categories"]}
    index = {c: k for k, c in enumerate(cat_ids)}
    bg = len(cat_ids)
    matrix = np.zeros((bg + 1, bg + 1), dtype=np.int64)
    images = {im["id"]: im for im in coco_gt["images"]}
    gts, crowds, preds = {}, {}, {}
    for ann in coco_gt["annotations"]:
        (crowds if ann.get("iscrowd", 0) else gts).setdefault(ann["image_id"], []).append(ann)
    key = "bbox" if task == "bbox" else "segmentation"
    for r in records:
        if r["score"] >= score_thresh and key in r:
            preds.setdefault(r["image_id"], []).append(r)
    for image_id, image in images.items():
        g = gts.get(image_id, [])
        p = sorted(preds.get(image_id, []), key=lambda r: -r["score"])
        dets = [coco_shape(r, image, task) for r in p]
        iou = coco_iou(dets, [coco_shape(a, image, task) for a in g], [False] * len(g))
        g_cls = np.array([a["category_id"] for a in g])
        taken = np.zeros(len(g), dtype=bool)
        pred_match = [-1] * len(p)
        for same_class in (True, False):
            for i, r in enumerate(p):
                if pred_match[i] >= 0 or not len(g):
                    continue
                allowed = ~taken & ((g_cls == r["category_id"]) if same_class else True)
                cand = np.where(allowed, iou[i], -1.0)
                j = int(np.argmax(cand))
                if cand[j] >= iou_thresh:
                    pred_match[i], taken[j] = j, True
        c = crowds.get(image_id, [])
        ioa = coco_iou(dets, [coco_shape(a, image, task) for a in c], [True] * len(c))
        for i, r in enumerate(p):
            col = index[r["category_id"]]
            if pred_match[i] >= 0:
                matrix[index[int(g_cls[pred_match[i]])], col] += 1
            elif not (ioa.shape[1] and ioa[i].max() > iou_thresh):
                matrix[bg, col] += 1
        for j, a in enumerate(g):
            if not taken[j]:
                matrix[index[a["category_id"]], bg] += 1
    return matrix, [names[c] for c in cat_ids] + [BACKGROUND]


def precision_recall_curves(coco_gt, records, task, ious=PR_IOUS):
    """{class name: {iou: (recall points, precision)}}: COCOeval's interpolated precision at its 101
    recall points (all areas, 100 detections), as COCO AP averages it; classes without ground truth
    are left out."""
    out = {}
    if not records:
        return out
    key = "bbox" if task == "bbox" else "segmentation"
    # faster-coco-eval takes integer image ids; ours may be file stems
    number = {im["id"]: k for k, im in enumerate(coco_gt["images"], start=1)}
    coco_gt = dict(coco_gt, images=[dict(im, id=number[im["id"]]) for im in coco_gt["images"]],
                   annotations=[dict(a, image_id=number[a["image_id"]]) for a in coco_gt["annotations"]])
    kept = [dict({k: v for k, v in r.items() if k in ("category_id", "score", key)}, image_id=number[r["image_id"]])
            for r in records if r["image_id"] in number]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(coco_gt)
        ev = COCOeval_faster(gt, gt.loadRes(kept), task, print_function=print)
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"]  # [IoU thresholds, recall points, classes, areas, max dets]
    thresholds = list(np.round(ev.params.iouThrs, 2))
    names = {c["id"]: c["name"] for c in coco_gt["categories"]}
    for k, cat_id in enumerate(ev.params.catIds):
        curves = {}
        for t in ious:
            p = precision[thresholds.index(round(t, 2)), :, k, 0, -1]
            if (p > -1).any():
                curves[t] = (np.asarray(ev.params.recThrs), np.clip(p, 0, None))
        if curves:
            out[names[cat_id]] = curves
    return out


def plot_confusion_matrix(matrix, names, path, title):
    """Counts in the cells; colour is the share of the row (each ground-truth class sums to 1)."""
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    for i in range(len(names)):
        for j in range(len(names)):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.6 else "black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_precision_recall(curves, path, title):
    """One panel per class, one line per IoU threshold."""
    names = list(curves)
    cols = 4
    rows = max(1, -(-len(names) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(12, 3 * rows), squeeze=False, sharex=True, sharey=True)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        for t, (recall, precision) in sorted(curves[name].items()):
            ax.plot(recall, precision, label=f"IoU {t:g} (AP {100 * precision.mean():.1f})")
        ax.set_title(name)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    for ax in axes[-1]:
        ax.set_xlabel("recall")
    for ax in axes[:, 0]:
        ax.set_ylabel("precision")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
