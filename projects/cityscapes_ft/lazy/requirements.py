"""A LazyConfig file's requirement on the installed detectron2, checked before it builds anything."""
import importlib
import os

import detectron2

from ..errors import ConfigNotRunnable


def require_detectron2_with(name: str, needs: str, config_file: str = "", packages=()) -> None:
    """Refuse, in one line, a config whose model needs `name` (e.g. "detectron2.modeling.ViT")
    when the installed detectron2 lacks it (`needs` says which detectron2 has it), or one of the
    Python `packages` it imports when it builds (ViTDet: timm)."""
    module_name, _, attribute = name.rpartition(".")
    try:
        found = hasattr(importlib.import_module(module_name), attribute)
    except ImportError:
        found = False
    if not found:
        where = f"{config_file}: " if config_file else ""
        installed = f"detectron2 {detectron2.__version__} at {os.path.dirname(detectron2.__file__)}"
        raise ConfigNotRunnable(f"{where}needs {name}, which {installed} lacks: it needs {needs}")
    for package in packages:
        try:
            importlib.import_module(package)
        except ImportError as e:
            where = f"{config_file}: " if config_file else ""
            raise ConfigNotRunnable(f"{where}{name} needs the Python package {package} ({e}): "
                                    f"pip install {package}") from e
