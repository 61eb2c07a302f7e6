"""The evaluator of a test dataset, chosen by its metadata's `evaluator_type` as detectron2 does."""
import os

from detectron2.data import MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_json
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators

from ..checks import detectron2_has_compiled_ops
from ..data.register import EVALUATOR_TYPE
from ..errors import ConfigNotRunnable
from .cityscapes_instance_seg import CityscapesInstanceSegEvaluator

# Ours (cityscapes_ft_instance_*) and detectron2's own cityscapes_fine_instance_seg_*.
CITYSCAPES_EVALUATOR_TYPES = (EVALUATOR_TYPE, "cityscapes_instance")
# register_coco_instances, or any dataset whose metadata says "coco".
COCO_EVALUATOR_TYPE = "coco"
SUPPORTED_EVALUATOR_TYPES = CITYSCAPES_EVALUATOR_TYPES + (COCO_EVALUATOR_TYPE,)
COCO_TASKS = ("bbox", "segm")


def evaluator_types(dataset_name):
    """The dataset's evaluator_type as a list (detectron2 allows one type or several), each one
    that cityscapes-ft evaluates; a missing or unknown type is one ConfigNotRunnable."""
    given = MetadataCatalog.get(dataset_name).get("evaluator_type")
    types = [given] if isinstance(given, str) else list(given or ())
    unknown = [t for t in types if t not in SUPPORTED_EVALUATOR_TYPES]
    if not types or unknown:
        has = f"evaluator_type {given!r}" if types else "no evaluator_type"
        raise ConfigNotRunnable(
            f"Test dataset '{dataset_name}' has {has}; cityscapes-ft evaluates the evaluator types "
            f"{', '.join(repr(t) for t in SUPPORTED_EVALUATOR_TYPES)} (Cityscapes: official and "
            "COCO-style AP; COCO: COCO box/mask AP). Set it where the dataset is registered "
            f"(MetadataCatalog.get('{dataset_name}').evaluator_type), or leave the dataset out of "
            "DATASETS.TEST"
        )
    return types


def build_evaluator(cfg, dataset_name, output_folder=None):
    """The evaluator of `dataset_name` for its evaluator_type:

    - "cityscapes_ft_instance" (ours) and "cityscapes_instance" (detectron2's Cityscapes datasets):
      `CityscapesInstanceSegEvaluator` with the tasks of CITYSCAPES_FT.EVAL_TASKS;
    - "coco": detectron2's `COCOEvaluator` on the dataset's COCO json, box AP and, with
      MODEL.MASK_ON, mask AP.

    Several types give a `DatasetEvaluators`. A Cityscapes type listed with "coco" leaves the
    COCO-style numbers to the COCOEvaluator (a result key may come from one evaluator only), which
    then writes into `<output_folder>/coco`. Outputs go to `output_folder`, by default
    OUTPUT_DIR/inference/<dataset>."""
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    types = evaluator_types(dataset_name)
    with_coco = COCO_EVALUATOR_TYPE in types
    evaluators = []
    if any(t in CITYSCAPES_EVALUATOR_TYPES for t in types):
        tasks = [t for t in cfg.CITYSCAPES_FT.EVAL_TASKS if not (with_coco and t in COCO_TASKS)]
        if tasks:
            evaluators.append(CityscapesInstanceSegEvaluator(
                dataset_name, output_folder, tasks=tasks, error_analysis=cfg.CITYSCAPES_FT.ERROR_ANALYSIS))
    if with_coco:
        _ensure_coco_json(cfg, dataset_name)
        evaluators.append(
            COCOEvaluator(
                dataset_name,
                tasks=COCO_TASKS if cfg.MODEL.MASK_ON else ("bbox",),
                output_dir=os.path.join(output_folder, "coco") if evaluators else output_folder,
                # detectron2's fast COCOeval is in its compiled extension; pycocotools' otherwise
                use_fast_impl=detectron2_has_compiled_ops(),
            )
        )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)


def _ensure_coco_json(cfg, dataset_name):
    """A "coco" dataset without `json_file` gets one made from its dicts, once per OUTPUT_DIR:
    COCOEvaluator would write it into its output folder and keep that path in the metadata, but
    the trainer's test() replaces that folder at every evaluation."""
    metadata = MetadataCatalog.get(dataset_name)
    if metadata.get("json_file"):
        return
    path = os.path.join(cfg.OUTPUT_DIR, "inference", f"{dataset_name}_coco_format.json")
    convert_to_coco_json(dataset_name, path)  # reuses the file if it is there
    metadata.set(json_file=path)
