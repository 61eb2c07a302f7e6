from .cityscapes_instance_seg import CityscapesEvaluationError, CityscapesInstanceSegEvaluator
from .report import format_results_tables

__all__ = ["CityscapesInstanceSegEvaluator", "CityscapesEvaluationError", "format_results_tables"]
