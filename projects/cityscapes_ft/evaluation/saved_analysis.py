"""tools/analyze_errors.py's work: the error analysis of an evaluation saved in a run directory."""
import glob
import json
import os
from collections import OrderedDict

from detectron2.data.datasets.coco import convert_to_coco_dict

from ..config import load_cityscapes_ft_cfg
from ..utils import atomic_write_json
from .analysis import analyze_errors
from .cityscapes_instance_seg import COCO_RESULTS_FILE


def analyze_saved_evaluation(output_dir, iou_thresh=0.5, score_thresh=0.5, tasks=("bbox", "segm")):
    """tools/analyze_errors.py: for each test dataset of OUTPUT_DIR/config.yaml with a saved
    evaluation (OUTPUT_DIR/inference/<dataset>/coco_instances_results.json), the analysis from those
    predictions and the dataset's ground truth (no model run). Adds "errors" to that evaluation's
    results.json and to its newest OUTPUT_DIR/eval_results/ record. Returns {dataset: errors}."""
    config = os.path.join(output_dir, "config.yaml")
    if not os.path.isfile(config):
        raise FileNotFoundError(f"{output_dir} has no config.yaml: not a cityscapes-ft run directory")
    cfg = load_cityscapes_ft_cfg(config)
    done = OrderedDict()
    for dataset in cfg.DATASETS.TEST:
        folder = os.path.join(output_dir, "inference", dataset)
        results_file = os.path.join(folder, COCO_RESULTS_FILE)
        if not os.path.isfile(results_file):
            continue
        with open(results_file) as f:
            records = json.load(f)
        errors = analyze_errors(convert_to_coco_dict(dataset), records, folder, tasks, iou_thresh, score_thresh)
        done[dataset] = errors
        records_to_update = [os.path.join(folder, "results.json")]
        saved = sorted(glob.glob(os.path.join(output_dir, "eval_results", f"{dataset}*.json")), key=os.path.getmtime)
        saved = [p for p in saved if os.path.basename(p)[len(dataset):][:1] in ("", ".", "_")
                 and "_TTA" not in os.path.basename(p)[len(dataset):]]
        records_to_update += saved[-1:]
        for path in records_to_update:
            if os.path.isfile(path):
                with open(path) as f:
                    record = json.load(f)
                record["results"]["errors"] = errors
                atomic_write_json(path, record)
    if not done:
        raise FileNotFoundError(f"No saved evaluation under {output_dir}/inference/<dataset>/{COCO_RESULTS_FILE} "
                                f"for the test datasets {list(cfg.DATASETS.TEST)}")
    return done
