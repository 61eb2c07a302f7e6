"""detectron2 LazyConfig (.py) files as run configs (tools/lazyconfig_train_net.py)."""
from .build import lazy_config_of
from .requirements import require_detectron2_with
from .translate import META_ARCHITECTURE, load_config_file, load_lazy_cityscapes_ft_cfg, load_lazy_config

__all__ = ["lazy_config_of", "load_config_file", "load_lazy_cityscapes_ft_cfg", "load_lazy_config",
           "require_detectron2_with", "META_ARCHITECTURE"]
