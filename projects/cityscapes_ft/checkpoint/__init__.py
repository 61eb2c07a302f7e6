from .checkpointer import CityscapesFTCheckpointer, LoadReport, build_checkpointer
from .head_transfer import ClassMapError, resolve_class_map, transfer_class_rows

__all__ = [
    "CityscapesFTCheckpointer", "LoadReport", "build_checkpointer", "ClassMapError",
    "resolve_class_map", "transfer_class_rows",
]
