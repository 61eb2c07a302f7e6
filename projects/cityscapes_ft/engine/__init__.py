from .ddp import unwrap, wrap_for_distributed
from .defaults import argument_parser, resolve_config, setup_cfg, train_or_evaluate
from .launch import launch
from .trainer import CityscapesFTTrainer

__all__ = [
    "argument_parser", "resolve_config", "setup_cfg", "train_or_evaluate", "launch", "CityscapesFTTrainer",
    "unwrap", "wrap_for_distributed",
]
