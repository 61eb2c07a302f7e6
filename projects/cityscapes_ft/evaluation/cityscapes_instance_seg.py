"""Official Cityscapes instance AP and COCO-style box/mask AP from one pass over the predictions."""
import contextlib
import copy
import io
import itertools
import logging
import os
from collections import OrderedDict

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_dict
from detectron2.evaluation import DatasetEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Instances
from detectron2.utils import comm
from faster_coco_eval import COCO, COCOeval_faster

from ..data.cityscapes import coco_category_ids, gtfine_file, thing_label_ids
from ..errors import CityscapesEvaluationError
from ..utils import atomic_write_json
from .analysis import analyze_errors
from .masks import encode_masks
from .official_parallel import OfficialMatcher, score_matches

logger = logging.getLogger(__name__)

COCO_METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
PREDICTIONS_FILE = "instances_predictions.json"
COCO_RESULTS_FILE = "coco_instances_results.json"  # detectron2's COCOEvaluator's name and format


def _without_masks(instances):
    """The same Instances without pred_masks (their RLE is made once, by `encode_masks`)."""
    return Instances(instances.image_size, **{k: v for k, v in instances.get_fields().items() if k != "pred_masks"})


class CityscapesInstanceSegEvaluator(DatasetEvaluator):
    """Evaluates instance predictions on a Cityscapes-format dataset.

    tasks: "cityscapes" (official cityscapesscripts AP/AP50 on instanceIds.png, overall and per
    class), "bbox" and "segm" (COCO-style AP/AP50/AP75/APs/APm/APl and per class, as detectron2's
    `COCOEvaluator` computes them: its ground truth from `convert_to_coco_dict`, its prediction
    records from `instances_to_coco_json`, mask AP on mask areas; scored by faster-coco-eval's
    compiled COCOeval, whose numbers equal pycocotools'). Predictions are kept as RLE and gathered to
    the main process, so it works across processes and machines; it writes
    `instances_predictions.json`, detectron2's `coco_instances_results.json` and the official
    results JSON, all under `output_dir`.

    It evaluates our datasets and detectron2's own `cityscapes_fine_instance_seg_*`: the official
    label ids come from the metadata's `thing_dataset_id_to_contiguous_id` or else from the class
    names, and each image's `*_gtFine_instanceIds.png` from its dataset dict's `instance_ids_file`
    or else from the image's path (in the metadata's `gt_dir`, if any).
    """

    def __init__(self, dataset_name, output_dir, tasks=("cityscapes", "bbox", "segm"), distributed=True,
                 workers=None, error_analysis=False):
        unknown = set(tasks) - {"cityscapes", "bbox", "segm"}
        if unknown:
            raise ValueError(f"CITYSCAPES_FT.EVAL_TASKS: unknown {sorted(unknown)}; "
                             "expected some of 'cityscapes', 'bbox', 'segm'")
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._tasks = tuple(tasks)
        self._distributed = distributed
        self._workers = workers  # processes for the official matching; None: the cores of this process
        # results["errors"]: TIDE's breakdown of box and mask AP, with pictures (evaluation/analysis.py)
        self._error_analysis = error_analysis
        self._metadata = MetadataCatalog.get(dataset_name)
        self._class_names = list(self._metadata.thing_classes)
        # Official Cityscapes label id of each class (the official task only: a COCO-style
        # evaluation needs no Cityscapes labels).
        self._label_ids = thing_label_ids(self._metadata) if "cityscapes" in self._tasks else None
        # Category id of each class in the COCO ground truth and results (detectron2's rule).
        self._category_ids = coco_category_ids(self._metadata)

    def reset(self):
        """Starts an evaluation: no predictions yet, a fresh official matcher (and its worker pool)."""
        self._predictions = []
        self._coco_records = []
        self._matcher = None
        dataset = DatasetCatalog.get(self._dataset_name)
        self._image_ids = {d["file_name"]: d.get("image_id", k) for k, d in enumerate(dataset)}
        if "cityscapes" in self._tasks:
            gt_dir = self._metadata.get("gt_dir")  # detectron2's Cityscapes datasets name it
            self._gt_files = {
                d["file_name"]: d.get("instance_ids_file")
                or gtfine_file(d["file_name"], "instanceIds.png", gt_dir)
                for d in dataset
            }
            self._matcher = OfficialMatcher(self._label_ids, self._workers)

    def process(self, inputs, outputs):
        """Encodes each image's masks once, queues its official matching and keeps its records."""
        for inp, out in zip(inputs, outputs):
            instances = out["instances"].to("cpu")
            image_id = self._image_ids.get(inp["file_name"], inp.get("image_id"))
            rles, crops = self._encode_masks(instances)
            # detectron2's own records (XYWH boxes, scores, classes), with the RLE masks added
            records = instances_to_coco_json(_without_masks(instances), image_id)
            for record, rle in zip(records, rles):
                record["segmentation"] = rle
            if self._matcher is not None:
                self._match_official(inp["file_name"], instances, crops)
            self._coco_records.extend(records)
            self._predictions.append(
                {
                    "file_name": inp["file_name"],
                    "boxes": instances.pred_boxes.tensor.numpy().tolist(),
                    "scores": instances.scores.numpy().tolist(),
                    "classes": instances.pred_classes.numpy().tolist(),
                    "masks": rles,
                }
            )

    @staticmethod
    def _encode_masks(instances):
        """RLE (as `instances_to_coco_json` writes it) and the crop of every predicted mask."""
        if not instances.has("pred_masks"):
            return [], None
        masks = instances.pred_masks
        if masks.dtype != torch.bool:  # binarised as detectron2's COCOEvaluator does (uint8 cast)
            masks = masks.to(torch.uint8) != 0
        return encode_masks(masks.numpy())

    def _match_official(self, file_name, instances, crops):
        gt = self._gt_files.get(file_name)
        if not gt or not os.path.isfile(gt):
            raise CityscapesEvaluationError(
                f"Official Cityscapes evaluation needs the ground-truth instance image {gt} for "
                f"{file_name}; it comes with gtFine (or make it from the polygons with "
                "cityscapesscripts' json2instanceImg)"
            )
        if crops is None:
            raise CityscapesEvaluationError(f"{file_name}: the official evaluation needs predicted masks "
                                            "(instances without pred_masks)")
        self._matcher.add(gt, instances.image_size, instances.pred_classes.tolist(), instances.scores.tolist(),
                          crops)

    def evaluate(self):
        """Gathers every process's predictions and matches; on the main process, writes the result files and returns {"cityscapes", "bbox", "segm"} (empty elsewhere)."""
        try:
            matches = self._matcher.results() if self._matcher is not None else []
        finally:
            if self._matcher is not None:
                self._matcher.close()
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            coco_records = list(itertools.chain(*comm.gather(self._coco_records, dst=0)))
            matches = list(itertools.chain(*comm.gather(matches, dst=0)))
            if not comm.is_main_process():
                return {}
        else:
            predictions, coco_records = self._predictions, self._coco_records
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
        for r in coco_records:  # contiguous class -> the dataset's category id, as COCOEvaluator does
            r["category_id"] = self._category_ids[r["category_id"]]
        atomic_write_json(os.path.join(self._output_dir, COCO_RESULTS_FILE), coco_records)
        results = OrderedDict()
        if "cityscapes" in self._tasks:
            results["cityscapes"] = self._eval_official(dataset, dict(matches))
        coco_tasks = [t for t in ("bbox", "segm") if t in self._tasks]
        if coco_tasks or self._error_analysis:
            coco_gt, coco_records = self._coco_with_integer_image_ids(coco_records)
            for task in coco_tasks:
                results[task] = self._eval_coco(coco_gt, coco_records, task)
            if self._error_analysis:
                results["errors"] = analyze_errors(coco_gt.dataset, coco_records, self._output_dir)
        return results

    # ---- official Cityscapes metric -------------------------------------------------------------
    def _eval_official(self, dataset, matches_by_gt):
        gt_files = [os.path.abspath(self._gt_files[d["file_name"]]) for d in dataset]
        ordered = OrderedDict((gt, matches_by_gt[gt]) for gt in gt_files)
        eval_dir = os.path.abspath(os.path.join(self._output_dir, "cityscapes_official"))
        os.makedirs(eval_dir, exist_ok=True)
        try:
            res = score_matches(ordered, os.path.join(eval_dir, "resultInstanceLevelSemanticLabeling.json"))
        except SystemExit as e:  # cityscapesscripts' printError exits
            raise CityscapesEvaluationError(f"cityscapesscripts' evaluation failed: {e}") from e
        out = OrderedDict(AP=100 * res["allAp"], AP50=100 * res["allAp50%"])
        for name in self._class_names:
            out[f"AP-{name}"] = 100 * res["classes"][name]["ap"]
        for name in self._class_names:
            out[f"AP50-{name}"] = 100 * res["classes"][name]["ap50%"]
        return out

    # ---- COCO-style AP --------------------------------------------------------------------------
    def _coco_with_integer_image_ids(self, coco_records):
        """detectron2's COCO ground truth of the dataset, and the records, with image ids numbered
        1..N (ours are file stems; faster-coco-eval takes integers)."""
        gt = convert_to_coco_dict(self._dataset_name)
        number = {image["id"]: k for k, image in enumerate(gt["images"], start=1)}
        for image in gt["images"]:
            image["id"] = number[image["id"]]
        for ann in gt["annotations"]:
            ann["image_id"] = number[ann["image_id"]]
        records = [dict(r, image_id=number[r["image_id"]]) for r in coco_records]
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(gt), records

    def _eval_coco(self, coco_gt, coco_records, task):
        if not coco_records:
            logger.warning(f"No predictions on {self._dataset_name}: COCO {task} AP is 0")
            out = OrderedDict((m, 0.0) for m in COCO_METRICS)
            has_gt = {a["category_id"] for a in coco_gt.dataset["annotations"] if not a["iscrowd"]}
            for category_id, name in zip(self._category_ids, self._class_names):
                out[f"AP-{name}"] = 0.0 if category_id in has_gt else float("nan")
            return out
        if task == "segm":  # mask AP on mask areas (small/medium/large), as detectron2 scores it
            coco_records = [{k: v for k, v in r.items() if k != "bbox"} for r in coco_records]
        else:  # loadRes adds fields to the records it is given
            coco_records = copy.deepcopy(coco_records)
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            coco_eval = COCOeval_faster(coco_gt, coco_gt.loadRes(coco_records), task, print_function=print)
            coco_eval.params.maxDets = [1, 10, 100]
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        logger.info(f"COCOeval {task} on {self._dataset_name}:\n{log.getvalue()}")
        # -1: no ground truth in that area range; detectron2 reports NaN
        out = OrderedDict((m, 100 * float(coco_eval.stats[i]) if coco_eval.stats[i] >= 0 else float("nan"))
                          for i, m in enumerate(COCO_METRICS))
        # precision: [IoU thresholds, recall points, classes, area ranges, max detections]
        precision = coco_eval.eval["precision"]
        cat_ids = list(coco_eval.params.catIds)
        for category_id, name in zip(self._category_ids, self._class_names):
            p = precision[:, :, cat_ids.index(category_id), 0, -1]
            p = p[p > -1]
            out[f"AP-{name}"] = 100 * float(p.mean()) if p.size else float("nan")
        return out
