from .cli import argument_parser, setup_cfg, train_or_evaluate
from .launch import launch
from .trainer import CityscapesFTTrainer, wrap_for_distributed

__all__ = [
    "argument_parser", "setup_cfg", "train_or_evaluate", "launch", "CityscapesFTTrainer",
    "wrap_for_distributed",
]
