from .curves import plot_training_curves
from .dataset_viewer import draw_dataset
from .demo import DemoInputError, VisualizationDemo, expand_inputs
from .drawing import InstancePredictor, draw_dataset_predictions, draw_ground_truth, draw_instances
from .report import REPORT_FILE, write_run_report
from .saved_predictions import draw_saved_predictions

__all__ = [
    "VisualizationDemo", "DemoInputError", "expand_inputs", "InstancePredictor",
    "draw_dataset_predictions", "draw_ground_truth", "draw_instances", "draw_dataset",
    "draw_saved_predictions", "plot_training_curves", "write_run_report", "REPORT_FILE",
]
