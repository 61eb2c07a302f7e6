"""cityscapes-ft: fine-tune COCO-pretrained Mask R-CNN on Cityscapes instance segmentation."""
from . import data  # noqa: F401  registers the datasets and the mapper, once, on import
from . import lazy  # noqa: F401  registers LazyConfigModel and LazyConfigMapper
from .config import add_cityscapes_ft_config
from .data import CityscapesInstanceMapper, register_cityscapes_ft_instances
from .engine import CityscapesFTTrainer, launch
from .evaluation import CityscapesInstanceSegEvaluator

__version__ = "0.1.0"

__all__ = [
    "add_cityscapes_ft_config",
    "register_cityscapes_ft_instances",
    "CityscapesInstanceMapper",
    "CityscapesFTTrainer",
    "CityscapesInstanceSegEvaluator",
    "launch",
]
