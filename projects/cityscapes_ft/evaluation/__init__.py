from .build import SUPPORTED_EVALUATOR_TYPES, build_evaluator, evaluator_types
from .cityscapes_instance_seg import (
    PREDICTIONS_FILE,
    CityscapesEvaluationError,
    CityscapesInstanceSegEvaluator,
)
from .report import flat_metric_tasks, format_results_tables

__all__ = ["CityscapesInstanceSegEvaluator", "CityscapesEvaluationError", "build_evaluator",
           "evaluator_types", "SUPPORTED_EVALUATOR_TYPES", "format_results_tables",
           "flat_metric_tasks"]
