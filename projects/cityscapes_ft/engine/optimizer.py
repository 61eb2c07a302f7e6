"""SGD with one parameter group per model part (backbone, FPN, heads) and kind (weights, biases,
norms), so each part has its own LR multiplier and norms/biases their own weight decay."""
from collections import OrderedDict, defaultdict

import torch
from detectron2.config import instantiate
from detectron2.utils.registry import locate
from omegaconf import OmegaConf

from ..lazy.build import lazy_config_of
from ..lazy.translate import target_name
from .ddp import unwrap

MODEL_PARTS = ("backbone", "fpn", "heads")
NORM_TYPES = (
    torch.nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    torch.nn.GroupNorm,
    torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
)


# The attribute of detectron2's feature-pyramid backbones that holds the trunk: FPN's ResNet or
# RegNet (`bottom_up`), ViTDet's SimpleFeaturePyramid's ViT (`net`).
TRUNK_ATTRIBUTES = ("bottom_up", "net")


def _trunk_attribute(backbone):
    return next((name for name in TRUNK_ATTRIBUTES if hasattr(backbone, name)), None)


def backbone_modules(model, include_fpn: bool):
    """The modules that staged freezing and the BACKBONE multiplier act on: the trunk of a
    feature-pyramid backbone (FPN's `bottom_up`, SimpleFeaturePyramid's `net`), or the whole
    backbone when it has no pyramid; with include_fpn, the whole backbone."""
    backbone = unwrap(model).backbone
    trunk = _trunk_attribute(backbone)
    if include_fpn or trunk is None:
        return backbone
    return getattr(backbone, trunk)


def model_part(model, parameter_name: str) -> str:
    """'backbone' (the trunk: ResNet, RegNet, ViT), 'fpn' (the rest of model.backbone) or 'heads'
    (RPN, ROI heads)."""
    if not parameter_name.startswith("backbone."):
        return "heads"
    trunk = _trunk_attribute(unwrap(model).backbone)
    if trunk is not None and not parameter_name.startswith(f"backbone.{trunk}."):
        return "fpn"
    return "backbone"


def layerwise_param_groups(cfg, model):
    """Groups named '<part>/<kind>' with lr = BASE_LR x part multiplier (x BIAS_LR_FACTOR for
    biases) and weight decay WEIGHT_DECAY, WEIGHT_DECAY_NORM (norm layers) or WEIGHT_DECAY_BIAS
    (other biases; None = WEIGHT_DECAY). Parameters frozen at build time (FREEZE_AT) are left
    out; parameters that staged freezing turns off later are in, so they train after the switch."""
    solver = cfg.SOLVER
    multipliers = {part: float(getattr(cfg.CITYSCAPES_FT.LR_MULTIPLIER, part.upper())) for part in MODEL_PARTS}
    bias_decay = solver.WEIGHT_DECAY if solver.WEIGHT_DECAY_BIAS is None else solver.WEIGHT_DECAY_BIAS
    groups = OrderedDict()
    seen = set()
    for module_name, module in unwrap(model).named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full_name = f"{module_name}.{name}" if module_name else name
            part = model_part(model, full_name)
            if isinstance(module, NORM_TYPES):
                kind, lr_factor, decay = "norm", 1.0, solver.WEIGHT_DECAY_NORM
            elif name == "bias":
                kind, lr_factor, decay = "bias", solver.BIAS_LR_FACTOR, bias_decay
            else:
                kind, lr_factor, decay = "weight", 1.0, solver.WEIGHT_DECAY
            key = f"{part}/{kind}"
            if key not in groups:
                factor = multipliers[part] * lr_factor
                groups[key] = {
                    "name": key, "part": part, "lr_factor": factor, "params": [],
                    "lr": solver.BASE_LR * factor, "weight_decay": decay,
                }
            groups[key]["params"].append(param)
    return list(groups.values())


def build_layerwise_optimizer(cfg, model) -> torch.optim.Optimizer:
    """SGD over layerwise_param_groups (gradient clipping: `clip_gradients`, before each step)."""
    return torch.optim.SGD(
        layerwise_param_groups(cfg, model),
        lr=cfg.SOLVER.BASE_LR,
        momentum=cfg.SOLVER.MOMENTUM,
        nesterov=cfg.SOLVER.NESTEROV,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )


def build_lazy_optimizer(cfg, model):
    """The LazyConfig's `optimizer` (its class and parameter rules: detectron2's
    get_default_optimizer_params with, e.g., ViTDet's layer-wise decay) with the CfgNode's resolved
    SOLVER values, its groups split by model part (backbone, FPN, heads) so CITYSCAPES_FT.LR_MULTIPLIER
    and the LR scheduler act on them as on the YAML runs' groups."""
    node = lazy_config_of(cfg).optimizer  # loaded anew: ours to change
    solver = cfg.SOLVER
    node.lr = solver.BASE_LR
    node.weight_decay = solver.WEIGHT_DECAY
    if "momentum" in node:
        node.momentum = solver.MOMENTUM
    if "nesterov" in node:
        node.nesterov = solver.NESTEROV
    params = node.params
    params.model = unwrap(model)
    if target_name(params).endswith(".get_default_optimizer_params"):
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


def clip_gradients(optimizer, clip_cfg) -> None:
    """detectron2's SOLVER.CLIP_GRADIENTS (each parameter's gradient clipped by value, or by its
    norm), on the parameters that have a gradient. detectron2 v0.6's clipping optimizer passes every
    parameter of its groups, and torch 2.14's clip_grad_value_ refuses one without a gradient: the
    backbone's, while staged freezing holds it."""
    if not clip_cfg.ENABLED:
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                continue
            if clip_cfg.CLIP_TYPE == "value":
                torch.nn.utils.clip_grad_value_(p, clip_cfg.CLIP_VALUE)
            else:
                torch.nn.utils.clip_grad_norm_(p, clip_cfg.CLIP_VALUE, clip_cfg.NORM_TYPE)
