"""The parts of a run that a LazyConfig file describes itself, built from it through detectron2's
registries: the model (META_ARCHITECTURE "LazyConfigModel") and the mappers
(INPUT.DATASET_MAPPER_NAME "LazyConfigMapper"); its optimizer: engine.optimizer.build_lazy_optimizer.
Each reads CITYSCAPES_FT.LAZY_CONFIG (the file and its overrides) and takes the values the CfgNode
holds for the translated keys (translate.TRANSLATED_KEYS), so a value resolved or typed there is
the value used."""
from detectron2.config import instantiate
from detectron2.data import DatasetMapper
from detectron2.modeling import META_ARCH_REGISTRY

from ..data.mapper import MAPPER_REGISTRY, CityscapesInstanceMapper
from .translate import META_ARCHITECTURE, MAPPER_NAME, load_lazy_config, target_name


def lazy_config_of(cfg):
    """The run's LazyConfig: CITYSCAPES_FT.LAZY_CONFIG.FILE with its OVERRIDES applied."""
    lazy_cfg = cfg.CITYSCAPES_FT.LAZY_CONFIG
    return load_lazy_config(lazy_cfg.FILE, list(lazy_cfg.OVERRIDES))


def _lazy_config_model(cfg):
    """The LazyConfig's `model` with MODEL.ROI_HEADS.NUM_CLASSES classes."""
    lazy = lazy_config_of(cfg)
    lazy.model.roi_heads.num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    return instantiate(lazy.model)


_lazy_config_model.__name__ = META_ARCHITECTURE
META_ARCH_REGISTRY.register(_lazy_config_model)


def _lazy_config_mapper(cfg, is_train: bool):
    """The LazyConfig's `dataloader.train.mapper` (or `.test.mapper`). detectron2's DatasetMapper
    there is built as our CityscapesInstanceMapper with the same arguments: boxes recomputed from
    the masks after the transforms (a Cityscapes box is its mask's extent), unreadable images named."""
    node = lazy_config_of(cfg).dataloader["train" if is_train else "test"].mapper
    if target_name(node) in (f"{DatasetMapper.__module__}.{DatasetMapper.__qualname__}",
                             "detectron2.data.DatasetMapper"):
        node._target_ = CityscapesInstanceMapper
        if is_train and cfg.MODEL.MASK_ON:
            node.recompute_boxes = True
    return instantiate(node)


_lazy_config_mapper.__name__ = MAPPER_NAME
MAPPER_REGISTRY.register(_lazy_config_mapper)
