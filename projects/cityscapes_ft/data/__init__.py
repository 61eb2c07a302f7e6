from .cityscapes import (
    CITYSCAPES_FRAME,
    CITYSCAPES_THING_CLASSES,
    CITYSCAPES_THING_COLORS,
    CITYSCAPES_THING_LABEL_IDS,
    CityscapesDataError,
    cityscapes_root,
    load_cityscapes_ft_instances,
    load_cityscapes_images,
)
from .mapper import MAPPER_REGISTRY, CityscapesInstanceMapper, build_mapper
from .register import CITYSCAPES_FT_SPLITS, EVALUATOR_TYPE, register_cityscapes_ft_instances
from .register import register_all_cityscapes_ft
from .train_dicts import log_training_set, training_dataset_dicts, training_repeat_factors

register_all_cityscapes_ft()
