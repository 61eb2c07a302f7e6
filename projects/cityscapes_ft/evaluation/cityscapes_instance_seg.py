"""Official Cityscapes instance AP and COCO-style box/mask AP from one pass over the predictions."""
import contextlib
import io
import itertools
import logging
import os
from collections import OrderedDict

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..errors import CityscapesEvaluationError
from ..utils import atomic_write_json
from .official_parallel import OfficialMatcher, score_matches

logger = logging.getLogger(__name__)

COCO_METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
PREDICTIONS_FILE = "instances_predictions.json"


class CityscapesInstanceSegEvaluator(DatasetEvaluator):
    """Evaluates instance predictions on a Cityscapes-format dataset.

    tasks: "cityscapes" (official cityscapesscripts AP/AP50 on instanceIds.png, overall and per
    class), "bbox" and "segm" (pycocotools COCOeval, AP/AP50/AP75/APs/APm/APl and per class).
    Predictions are kept as RLE and gathered to the main process, so it works across processes
    and machines; every file it writes stays under `output_dir`.
    """

    def __init__(self, dataset_name, output_dir, tasks=("cityscapes", "bbox", "segm"), distributed=True,
                 workers=None):
        unknown = set(tasks) - {"cityscapes", "bbox", "segm"}
        if unknown:
            raise ValueError(f"CITYSCAPES_FT.EVAL_TASKS: unknown {sorted(unknown)}; "
                             "expected some of 'cityscapes', 'bbox', 'segm'")
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._tasks = tuple(tasks)
        self._distributed = distributed
        self._workers = workers  # processes for the official matching; None: one per core
        self._metadata = MetadataCatalog.get(dataset_name)
        self._class_names = list(self._metadata.thing_classes)
        contiguous_to_label_id = {v: k for k, v in self._metadata.thing_dataset_id_to_contiguous_id.items()}
        self._label_ids = [contiguous_to_label_id[i] for i in range(len(self._class_names))]

    def reset(self):
        self._predictions = []
        self._matcher = None
        if "cityscapes" in self._tasks:
            self._gt_files = {d["file_name"]: d.get("instance_ids_file") for d in DatasetCatalog.get(self._dataset_name)}
            pred_dir = os.path.join(self._output_dir, "cityscapes_official", f"pred_rank{comm.get_rank()}")
            self._matcher = OfficialMatcher(pred_dir, self._label_ids, self._workers)

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            instances = out["instances"].to("cpu")
            rles = []
            if instances.has("pred_masks"):
                for m in instances.pred_masks.numpy():
                    rle = mask_util.encode(np.asfortranarray(m.view(np.uint8) if m.dtype == bool else m.astype(np.uint8)))
                    rle["counts"] = rle["counts"].decode("ascii")
                    rles.append(rle)
            if self._matcher is not None:
                self._match_official(inp["file_name"], instances, rles)
            self._predictions.append(
                {
                    "file_name": inp["file_name"],
                    "boxes": instances.pred_boxes.tensor.numpy().tolist(),
                    "scores": instances.scores.numpy().tolist(),
                    "classes": instances.pred_classes.numpy().tolist(),
                    "masks": rles,
                }
            )

    def _match_official(self, file_name, instances, rles):
        gt = self._gt_files.get(file_name)
        if not gt or not os.path.isfile(gt):
            raise CityscapesEvaluationError(
                f"Official Cityscapes evaluation needs the ground-truth instance image {gt} for "
                f"{file_name}; it comes with gtFine (or make it from the polygons with "
                "cityscapesscripts' json2instanceImg)"
            )
        stem = os.path.basename(file_name)[: -len("_leftImg8bit.png")]
        self._matcher.add(
            stem, gt, instances.pred_classes.tolist(), instances.scores.tolist(),
            rles,
        )

    def evaluate(self):
        matches = self._matcher.results() if self._matcher is not None else []
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            matches = list(itertools.chain(*comm.gather(matches, dst=0)))
            if not comm.is_main_process():
                return {}
        else:
            predictions = self._predictions
        dataset = DatasetCatalog.get(self._dataset_name)
        by_file = {p["file_name"]: p for p in predictions}
        missing = [d["file_name"] for d in dataset if d["file_name"] not in by_file]
        if missing:
            raise CityscapesEvaluationError(
                f"{self._dataset_name}: no predictions for {len(missing)} of {len(dataset)} images "
                f"(first: {missing[0]}); evaluate the whole dataset"
            )
        os.makedirs(self._output_dir, exist_ok=True)
        # Kept for tools/visualize_json_results.py: boxes, scores, classes and RLE masks per image.
        atomic_write_json(os.path.join(self._output_dir, PREDICTIONS_FILE), predictions)
        results = OrderedDict()
        if "cityscapes" in self._tasks:
            results["cityscapes"] = self._eval_official(dataset, dict(matches))
        for task in ("bbox", "segm"):
            if task in self._tasks:
                results[task] = self._eval_coco(dataset, by_file, task)
        return results

    # ---- official Cityscapes metric -------------------------------------------------------------
    def _eval_official(self, dataset, matches_by_gt):
        ordered = OrderedDict(
            (os.path.abspath(d["instance_ids_file"]), matches_by_gt[os.path.abspath(d["instance_ids_file"])])
            for d in dataset
        )
        eval_dir = os.path.abspath(os.path.join(self._output_dir, "cityscapes_official"))
        try:
            res = score_matches(ordered, eval_dir, os.path.join(eval_dir, "resultInstanceLevelSemanticLabeling.json"))
        except SystemExit as e:  # cityscapesscripts' printError exits
            raise CityscapesEvaluationError(f"cityscapesscripts' evaluation failed: {e}") from e
        out = OrderedDict(AP=100 * res["allAp"], AP50=100 * res["allAp50%"])
        for name in self._class_names:
            out[f"AP-{name}"] = 100 * res["classes"][name]["ap"]
        for name in self._class_names:
            out[f"AP50-{name}"] = 100 * res["classes"][name]["ap50%"]
        return out

    # ---- COCO-style AP --------------------------------------------------------------------------
    def _coco_ground_truth(self, dataset):
        images, annotations = [], []
        for img_id, d in enumerate(dataset, start=1):
            h, w = d["height"], d["width"]
            images.append({"id": img_id, "height": h, "width": w, "file_name": d["file_name"]})
            for ann in d["annotations"]:
                rle = mask_util.merge(mask_util.frPyObjects(ann["segmentation"], h, w))
                box = BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYWH_ABS)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": img_id,
                        "category_id": ann["category_id"],
                        "iscrowd": ann.get("iscrowd", 0),
                        "bbox": [float(x) for x in box],
                        "area": float(mask_util.area(rle)),
                        "segmentation": ann["segmentation"],
                    }
                )
        categories = [{"id": i, "name": n} for i, n in enumerate(self._class_names)]
        coco = COCO()
        coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    def _eval_coco(self, dataset, by_file, task):
        coco_gt = self._coco_ground_truth(dataset)
        detections = []
        for img_id, d in enumerate(dataset, start=1):
            p = by_file[d["file_name"]]
            for k, (box, score, cls) in enumerate(zip(p["boxes"], p["scores"], p["classes"])):
                x0, y0, x1, y1 = box
                det = {"image_id": img_id, "category_id": cls, "score": score,
                       "bbox": [x0, y0, x1 - x0, y1 - y0]}
                if task == "segm":
                    det["segmentation"] = p["masks"][k]
                detections.append(det)
        if not detections:
            logger.warning(f"No predictions on {self._dataset_name}: COCO {task} AP is 0")
            out = OrderedDict((m, 0.0) for m in COCO_METRICS)
            has_gt = {a["category_id"] for a in coco_gt.dataset["annotations"] if not a["iscrowd"]}
            for k, name in enumerate(self._class_names):
                out[f"AP-{name}"] = 0.0 if k in has_gt else float("nan")
            return out
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            coco_dt = coco_gt.loadRes(detections)
            coco_eval = COCOeval(coco_gt, coco_dt, task)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        logger.info(f"COCOeval {task} on {self._dataset_name}:\n{log.getvalue()}")
        out = OrderedDict((m, 100 * float(coco_eval.stats[i])) for i, m in enumerate(COCO_METRICS))
        # precision: [IoU thresholds, recall points, classes, area ranges, max detections]
        precision = coco_eval.eval["precision"]
        for k, name in enumerate(self._class_names):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            out[f"AP-{name}"] = 100 * float(p.mean()) if p.size else float("nan")
        return out
