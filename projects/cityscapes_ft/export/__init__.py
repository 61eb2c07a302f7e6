"""Deployment: a fine-tuned model exported (ONNX, TorchScript) with a torch-only runner
(runtime.py), its AP checked against the original's; detectron2.export without caffe2."""
from ..compat import import_detectron2_export
from .exporter import (
    FORMATS,
    ExportedDetector,
    ExportedInstancePredictor,
    check_config_exportable,
    evaluate_export,
    export_model,
)
from .runtime import ExportedMaskRCNN

__all__ = [
    "import_detectron2_export", "FORMATS", "ExportedDetector",
    "ExportedInstancePredictor", "check_config_exportable", "evaluate_export", "export_model", "ExportedMaskRCNN",
]
