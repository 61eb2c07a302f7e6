from .checkpointer import CityscapesFTCheckpointer, LoadReport, build_checkpointer, file_sha256
from .head_transfer import ClassMapError, resolve_class_map, transfer_class_rows
from .loading import load_model, load_weights

__all__ = [
    "CityscapesFTCheckpointer", "LoadReport", "build_checkpointer", "ClassMapError",
    "resolve_class_map", "transfer_class_rows", "load_model", "load_weights", "file_sha256",
]
