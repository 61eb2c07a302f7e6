from .cityscapes_instance_seg import (
    PREDICTIONS_FILE,
    CityscapesEvaluationError,
    CityscapesInstanceSegEvaluator,
)
from .report import format_results_tables

__all__ = ["CityscapesInstanceSegEvaluator", "CityscapesEvaluationError", "format_results_tables"]
