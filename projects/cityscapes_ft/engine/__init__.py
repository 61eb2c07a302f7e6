from .defaults import argument_parser, resolve_config, setup_cfg, train_or_evaluate
from .launch import launch
from .trainer import CityscapesFTTrainer, wrap_for_distributed

__all__ = [
    "argument_parser", "resolve_config", "setup_cfg", "train_or_evaluate", "launch", "CityscapesFTTrainer",
    "wrap_for_distributed",
]
