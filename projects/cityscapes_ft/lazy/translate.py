"""A detectron2 LazyConfig (.py) file as the run's config: its `train`, `dataloader`, `optimizer`
and `lr_multiplier` translated into detectron2's CfgNode keys, so that one trainer, one schedule
resolution, one resume and one evaluation serve YAML and LazyConfig runs alike, and
OUTPUT_DIR/config.yaml describes either.

What stays in the LazyConfig file (and is read from it by every process, with the same overrides):
the `model` (built by the LazyConfigModel meta-architecture), the mappers of `dataloader.train` and
`dataloader.test` (LazyConfigMapper), and the optimizer's class and parameter rules (layer-wise
decay, overrides). Its location and overrides are kept in CITYSCAPES_FT.LAZY_CONFIG.

cityscapes-ft's own keys, which detectron2's LazyConfigs lack, come from the file's `recipe` node
(nested, in the YAML configs' names: `recipe = dict(CITYSCAPES_FT=dict(SCHEDULE=...))`) and from
command-line overrides whose first part is upper case (`CITYSCAPES_FT.EARLY_STOP.PATIENCE=2`).
"""
import logging
import os
from typing import Dict, List, Sequence, Tuple

from detectron2.config import CfgNode as CN
from detectron2.config import LazyConfig, get_cfg
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..config import _ints_for_float_keys, _unknown_key_message, add_cityscapes_ft_config, load_cityscapes_ft_cfg
from ..errors import ConfigNotRunnable

logger = logging.getLogger(__name__)

META_ARCHITECTURE = "LazyConfigModel"
MAPPER_NAME = "LazyConfigMapper"

# LazyConfig key -> CfgNode key: the values the trainer reads from the CfgNode.
TRANSLATED_KEYS = {
    "train.max_iter": "SOLVER.MAX_ITER",
    "train.init_checkpoint": "MODEL.WEIGHTS",
    "train.output_dir": "OUTPUT_DIR",
    "train.amp.enabled": "SOLVER.AMP.ENABLED",
    "train.checkpointer.period": "SOLVER.CHECKPOINT_PERIOD",
    "train.eval_period": "TEST.EVAL_PERIOD",
    "train.log_period": "CITYSCAPES_FT.LOG_PERIOD",
    "train.device": "MODEL.DEVICE",
    "train.cudnn_benchmark": "CUDNN_BENCHMARK",
    "train.seed": "SEED",
    "dataloader.train.total_batch_size": "SOLVER.IMS_PER_BATCH",
    "dataloader.train.num_workers": "DATALOADER.NUM_WORKERS",
    "dataloader.train.dataset.names": "DATASETS.TRAIN",
    "dataloader.train.dataset.filter_empty": "DATALOADER.FILTER_EMPTY_ANNOTATIONS",
    "dataloader.test.dataset.names": "DATASETS.TEST",
    "optimizer.lr": "SOLVER.BASE_LR",
    "optimizer.momentum": "SOLVER.MOMENTUM",
    "optimizer.nesterov": "SOLVER.NESTEROV",
    "optimizer.weight_decay": "SOLVER.WEIGHT_DECAY",
    "optimizer.params.weight_decay_norm": "SOLVER.WEIGHT_DECAY_NORM",
    "optimizer.params.bias_lr_factor": "SOLVER.BIAS_LR_FACTOR",
    "optimizer.params.weight_decay_bias": "SOLVER.WEIGHT_DECAY_BIAS",
    "model.roi_heads.num_classes": "MODEL.ROI_HEADS.NUM_CLASSES",
    # a ResNet trunk's (for the log's checks and config.yaml; the model is built from the file)
    "model.backbone.bottom_up.stages.depth": "MODEL.RESNETS.DEPTH",
    "model.backbone.bottom_up.stages.norm": "MODEL.RESNETS.NORM",
    "model.backbone.bottom_up.freeze_at": "MODEL.BACKBONE.FREEZE_AT",
    "lr_multiplier.scheduler.milestones": "SOLVER.STEPS",
    "lr_multiplier.scheduler.values": "SOLVER.GAMMA",
    "lr_multiplier.warmup_length": "SOLVER.WARMUP_ITERS",
    "lr_multiplier.warmup_factor": "SOLVER.WARMUP_FACTOR",
    "lr_multiplier.warmup_method": "SOLVER.WARMUP_METHOD",
}
# Nodes read from the LazyConfig file itself when the model, mappers and optimizer are built.
READ_FROM_FILE = ("model", "dataloader.train.mapper", "dataloader.test.mapper", "optimizer", "recipe")
# Values of detectron2's lazy trainer that ours has no use for: typing one is refused, a file's
# value is listed once in the log.
NOT_USED = ("train.ddp", "train.checkpointer.max_to_keep", "dataloader.evaluator",
            "dataloader.train.sampler", "dataloader.test.num_workers")


def split_overrides(opts: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(LazyConfig overrides `a.b=c`, CfgNode overrides [KEY, VALUE, ...] from `KEY.PATH=VALUE`
    whose first part is upper case)."""
    lazy, yacs = [], []
    for item in opts:
        if "=" not in item:
            raise ConfigNotRunnable(
                f"override '{item}': LazyConfig overrides are key=value (e.g. train.max_iter=100 or "
                "CITYSCAPES_FT.EARLY_STOP.PATIENCE=2)"
            )
        key, value = item.split("=", 1)
        if key.split(".")[0].isupper():
            yacs += [key, value]
        else:
            lazy.append(item)
    return lazy, yacs


def load_lazy_config(config_file: str, overrides: Sequence[str] = ()):
    """detectron2's LazyConfig.load + apply_overrides, with one-line errors naming the file."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"--config-file: no such file '{config_file}'")
    try:
        lazy = LazyConfig.load(config_file)
    except ConfigNotRunnable:
        raise
    except (ImportError, AttributeError, SyntaxError) as e:
        raise ConfigNotRunnable(f"{config_file} cannot be loaded by this detectron2: {type(e).__name__}: {e}") from e
    try:
        return LazyConfig.apply_overrides(lazy, list(overrides))
    except Exception as e:  # hydra's parser and OmegaConf raise their own types
        raise ConfigNotRunnable(f"LazyConfig overrides {list(overrides)} on {config_file}: {e}") from e


def _select(lazy, key):
    return OmegaConf.select(lazy, key, default=None)


def target_name(node) -> str:
    """The qualified name of a LazyCall node's `_target_` (a callable or its name), else ""."""
    target = node.get("_target_") if isinstance(node, (DictConfig, dict)) else None
    if target is None:
        return ""
    return target if isinstance(target, str) else f"{target.__module__}.{target.__qualname__}"


def _plain(value):
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, list):
        return tuple(value)
    return value


def _schedule_values(lazy, config_file) -> Dict[str, object]:
    """SOLVER keys of the file's lr_multiplier: a WarmupParamScheduler over a
    MultiStepParamScheduler (detectron2's LazyConfigs) or a CosineParamScheduler."""
    node = _select(lazy, "lr_multiplier")
    if node is None:
        return {}
    out = {}
    scheduler = node
    max_iter = _select(lazy, "train.max_iter")
    if target_name(node).endswith("WarmupParamScheduler"):
        scheduler = node.scheduler
        length = float(node.get("warmup_length", 0.0))
        updates = scheduler.get("num_updates") or max_iter
        out["SOLVER.WARMUP_ITERS"] = int(round(length * updates)) if updates else 0
        out["SOLVER.WARMUP_FACTOR"] = float(node.get("warmup_factor", 0.001))
        out["SOLVER.WARMUP_METHOD"] = str(node.get("warmup_method", "linear"))
    else:
        out["SOLVER.WARMUP_ITERS"] = 0
    name = target_name(scheduler)
    if name.endswith("MultiStepParamScheduler"):
        values = [float(v) for v in scheduler["values"]]
        ratios = {round(b / a, 9) for a, b in zip(values, values[1:])} if values[0] else set()
        if len(ratios) > 1 or values[0] != 1.0:
            raise ConfigNotRunnable(
                f"{config_file}: lr_multiplier.scheduler.values {values} is not 1.0 followed by a "
                "constant factor per step (what detectron2's SOLVER.GAMMA states)"
            )
        out["SOLVER.GAMMA"] = ratios.pop() if ratios else 0.1
        milestones = [int(m) for m in (scheduler.get("milestones") or ())]
        if scheduler.get("num_updates") is None and len(milestones) == len(values):
            milestones = milestones[:-1]  # fvcore: without num_updates, the last milestone is the end
        out["SOLVER.STEPS"] = tuple(milestones)
        out["SOLVER.LR_SCHEDULER_NAME"] = "WarmupMultiStepLR"
    elif name.endswith("CosineParamScheduler"):
        if float(scheduler.get("start_value", 1.0)) != 1.0 or float(scheduler.get("end_value", 0.0)) != 0.0:
            raise ConfigNotRunnable(f"{config_file}: lr_multiplier's CosineParamScheduler must go from 1.0 to 0.0")
        out["SOLVER.LR_SCHEDULER_NAME"] = "WarmupCosineLR"
        out["SOLVER.STEPS"] = ()
    else:
        raise ConfigNotRunnable(
            f"{config_file}: lr_multiplier is {name or type(scheduler).__name__}; cityscapes-ft runs "
            "WarmupParamScheduler over MultiStepParamScheduler or CosineParamScheduler (detectron2's "
            "SOLVER.LR_SCHEDULER_NAME WarmupMultiStepLR / WarmupCosineLR)"
        )
    return out


def _test_sizes(lazy) -> Dict[str, object]:
    """INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST / FORMAT from the test mapper (used by the demo, the
    visualizers and TTA, which read the CfgNode)."""
    out = {}
    mapper = _select(lazy, "dataloader.test.mapper")
    if mapper is None:
        return out
    for aug in mapper.get("augmentations") or ():
        if target_name(aug).endswith("ResizeShortestEdge"):
            short = _plain(aug.short_edge_length)
            out["INPUT.MIN_SIZE_TEST"] = int(short[0] if isinstance(short, tuple) else short)
            out["INPUT.MAX_SIZE_TEST"] = int(aug.get("max_size", 1333))
    image_format = _select(lazy, "dataloader.train.mapper.image_format") or _select(lazy, "model.input_format")
    if image_format:
        out["INPUT.FORMAT"] = str(image_format)
    return out


def _set(cfg, key, value, config_file, lazy_key):
    *parents, leaf = key.split(".")
    target = cfg
    for part in parents:
        target = target[part]
    old = target[leaf]
    if isinstance(old, tuple) and isinstance(value, str):
        value = (value,)
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if old is not None and value is not None and not isinstance(value, type(old)):
        raise ConfigNotRunnable(f"{config_file}: {lazy_key} = {value!r} does not fit {key} "
                                f"(expected {type(old).__name__})")
    target[leaf] = value


# detectron2's LazyConfig nodes; a file's other nodes (ours: `input_sizes`) act through
# interpolations ("${input_sizes.crop_size}") in these.
DETECTRON2_NODES = ("model", "dataloader", "optimizer", "lr_multiplier", "train")
_ABSENT = object()


def _check_typed(lazy_overrides, config_file, lazy):
    """Every typed key exists in the file, and is one that cityscapes-ft reads."""
    reads = (f"it reads {', '.join(sorted(TRANSLATED_KEYS))}, the nodes {', '.join(READ_FROM_FILE)}, "
             "and the file's own nodes")
    for item in lazy_overrides:
        key = item.split("=", 1)[0]
        if key.startswith(("+", "~")):
            continue  # hydra's add / delete
        if key not in TRANSLATED_KEYS and OmegaConf.select(lazy, key, default=_ABSENT) is _ABSENT:
            raise ConfigNotRunnable(f"override {item}: {config_file} has no key {key}")
        if any(key == k or key.startswith(k + ".") for k in NOT_USED):
            raise ConfigNotRunnable(f"override {item}: {key} is not used by cityscapes-ft's trainer "
                                    f"(README: 'LazyConfig files'); {reads}")
        read = key in TRANSLATED_KEYS or key.startswith("lr_multiplier.") or any(
            key == k or key.startswith(k + ".") for k in READ_FROM_FILE)
        if key.split(".")[0] in DETECTRON2_NODES and not read:
            raise ConfigNotRunnable(f"override {item}: cityscapes-ft does not read {key} of {config_file}; "
                                    f"{reads}")


def typed_keys(lazy_overrides, yacs_overrides) -> Dict[str, str]:
    """CfgNode key -> where it was typed: the values the schedule uses as typed."""
    given = {}
    for item in lazy_overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key in TRANSLATED_KEYS:
            given[TRANSLATED_KEYS[key]] = f"set on the command line as {key}"
    for key in yacs_overrides[0::2]:
        given[key] = "set on the command line"
    return given


def load_lazy_cityscapes_ft_cfg(config_file: str, opts: Sequence[str] = ()) -> Tuple[CN, Dict[str, str]]:
    """(CfgNode, typed keys) of a LazyConfig file with `key=value` overrides: detectron2's defaults
    and our keys, the file's translated values, its `recipe`, then the upper-case overrides."""
    if not config_file.endswith(".py"):
        raise ConfigNotRunnable(
            f"--config-file {config_file}: tools/lazyconfig_train_net.py reads LazyConfig .py files; "
            "for YAML configs use tools/train_net.py"
        )
    lazy_overrides, yacs_overrides = split_overrides([str(o) for o in opts])
    _check_typed(lazy_overrides, config_file, load_lazy_config(config_file))
    lazy = load_lazy_config(config_file, lazy_overrides)
    if _select(lazy, "model") is None:
        raise ConfigNotRunnable(f"{config_file} has no `model`: not a detectron2 LazyConfig of a model")
    cfg = get_cfg()
    add_cityscapes_ft_config(cfg)
    values = {}
    for lazy_key, key in TRANSLATED_KEYS.items():
        if lazy_key.startswith("lr_multiplier."):
            continue
        value = _plain(_select(lazy, lazy_key))
        if value is not None:
            values[key] = (value, lazy_key)
    for key, value in {**_schedule_values(lazy, config_file), **_test_sizes(lazy)}.items():
        values[key] = (value, "lr_multiplier" if key.startswith("SOLVER.") else "dataloader.test.mapper")
    for key, (value, lazy_key) in values.items():
        _set(cfg, key, value, config_file, lazy_key)
    if _select(lazy, "model.backbone.bottom_up.stages.norm") is None:  # RegNet, ViT: no ResNet keys
        cfg.MODEL.RESNETS.NORM = str(_select(lazy, "model.backbone.bottom_up.norm") or "")
    cfg.MODEL.MASK_ON = _select(lazy, "model.roi_heads.mask_head") is not None
    if target_name(_select(lazy, "model.roi_heads")).endswith("CascadeROIHeads"):
        cfg.MODEL.ROI_HEADS.NAME = "CascadeROIHeads"
    cfg.MODEL.META_ARCHITECTURE = META_ARCHITECTURE
    cfg.INPUT.DATASET_MAPPER_NAME = MAPPER_NAME
    cfg.CITYSCAPES_FT.LAZY_CONFIG.FILE = os.path.abspath(config_file)
    cfg.CITYSCAPES_FT.LAZY_CONFIG.OVERRIDES = tuple(lazy_overrides)
    recipe = _select(lazy, "recipe")
    try:
        if recipe is not None:
            cfg.merge_from_other_cfg(CN(OmegaConf.to_container(recipe, resolve=True)))
        cfg.merge_from_list(_ints_for_float_keys(cfg, yacs_overrides))
    except (KeyError, AssertionError) as e:
        raise ConfigNotRunnable(_unknown_key_message(cfg, f"{config_file} (its recipe)", yacs_overrides, e)) from e
    except ValueError as e:
        raise ConfigNotRunnable(f"{e} (in {config_file}'s recipe or the overrides {yacs_overrides})") from e
    unused = [k for k in NOT_USED if _select(lazy, k) is not None]
    if unused:
        logger.info(f"{config_file}: not used by cityscapes-ft's trainer: {', '.join(unused)}")
    return cfg, typed_keys(lazy_overrides, yacs_overrides)


def load_config_file(config_file: str, opts: Sequence[str] = ()) -> CN:
    """The config of a YAML file (KEY VALUE overrides) or of a LazyConfig .py file (key=value
    overrides), for the tools that take either (analysis, demo, export, submission, viewers)."""
    if config_file.endswith(".py"):
        return load_lazy_cityscapes_ft_cfg(config_file, opts)[0]
    return load_cityscapes_ft_cfg(config_file, opts)
