"""The parts of a run that a LazyConfig file describes itself, built from it through detectron2's
registries: the model (META_ARCHITECTURE "LazyConfigModel") and the mappers (INPUT.DATASET_MAPPER_NAME
"LazyConfigMapper"), plus its optimizer. Each reads CITYSCAPES_FT.LAZY_CONFIG (the file and its
overrides) and takes the values the CfgNode holds for the translated keys (translate.TRANSLATED_KEYS),
so a value resolved or typed there is the value used."""
import copy
from collections import defaultdict

from detectron2.config import instantiate
from detectron2.data import DatasetMapper
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.registry import locate
from omegaconf import OmegaConf

from ..data.mapper import MAPPER_REGISTRY, CityscapesInstanceMapper
from ..engine.ddp import unwrap
from ..engine.optimizer import MODEL_PARTS, model_part
from .translate import META_ARCHITECTURE, MAPPER_NAME, load_lazy_config


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
    if node.get("_target_") in (DatasetMapper, "detectron2.data.DatasetMapper",
                                "detectron2.data.dataset_mapper.DatasetMapper"):
        node._target_ = CityscapesInstanceMapper
        if is_train and cfg.MODEL.MASK_ON:
            node.recompute_boxes = True
    return instantiate(node)


_lazy_config_mapper.__name__ = MAPPER_NAME
MAPPER_REGISTRY.register(_lazy_config_mapper)


def build_lazy_optimizer(cfg, model):
    """The LazyConfig's `optimizer` (its class and parameter rules: detectron2's
    get_default_optimizer_params with, e.g., ViTDet's layer-wise decay) with the CfgNode's resolved
    SOLVER values, its groups split by model part (backbone, FPN, heads) so CITYSCAPES_FT.LR_MULTIPLIER
    and the LR scheduler act on them as on the YAML runs' groups."""
    node = copy.deepcopy(lazy_config_of(cfg).optimizer)
    solver = cfg.SOLVER
    node.lr = solver.BASE_LR
    node.weight_decay = solver.WEIGHT_DECAY
    if "momentum" in node:
        node.momentum = solver.MOMENTUM
    if "nesterov" in node:
        node.nesterov = solver.NESTEROV
    params = node.params
    params.model = unwrap(model)
    if str(params.get("_target_", "")).endswith("get_default_optimizer_params") or getattr(
            params.get("_target_"), "__name__", "") == "get_default_optimizer_params":
        params.base_lr = solver.BASE_LR
        params.weight_decay = solver.WEIGHT_DECAY
        params.weight_decay_norm = solver.WEIGHT_DECAY_NORM
        params.bias_lr_factor = solver.BIAS_LR_FACTOR
        params.weight_decay_bias = solver.WEIGHT_DECAY_BIAS
    groups = instantiate(params)  # detectron2's groups: {"params": [...], "lr": ..., ...}
    multipliers = {part: float(getattr(cfg.CITYSCAPES_FT.LR_MULTIPLIER, part.upper())) for part in MODEL_PARTS}
    names = {id(p): n for n, p in unwrap(model).named_parameters()}
    split = []
    for i, group in enumerate(groups):
        by_part = defaultdict(list)
        for p in group["params"]:
            by_part[model_part(model, names[id(p)])].append(p)
        for part, group_params in by_part.items():
            lr = group.get("lr", solver.BASE_LR) * multipliers[part]
            split.append({**group, "params": group_params, "lr": lr,
                          "lr_factor": lr / solver.BASE_LR if solver.BASE_LR else 0.0,
                          "part": part, "name": f"{part}/group{i}"})
    # the optimizer class with the node's other arguments, over these groups (an OmegaConf node
    # cannot hold the parameter tensors)
    target = node._target_
    kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in ("_target_", "params")}
    return (locate(target) if isinstance(target, str) else target)(split, **kwargs)
