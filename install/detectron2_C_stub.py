"""Stand-in for ``detectron2._C`` in a detectron2 built without its C++/CUDA extension.

Installed as ``detectron2/_C.py`` by ``install/setup_env.sh``. ``pb1-detectron2==0.6`` ships no C++
sources, and ``detectron2.layers`` imports ``_C`` at module level, so something must answer that
import. Mask R-CNN R50-FPN never calls into ``_C`` (ROIAlign and NMS come from torchvision).
The few ops that do (deformable conv, rotated boxes, the fast COCOeval) fail here with one message
that names the missing extension, instead of an AttributeError deep inside detectron2.
"""

BUILT_WITHOUT_EXTENSION = True


class MissingDetectron2Extension(RuntimeError):
    pass


def get_compiler_version():
    return "none (detectron2 built without its C++ extension)"


def get_cuda_version():
    return "none (detectron2 built without its C++ extension)"


def has_cuda():
    return False


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise MissingDetectron2Extension(
        f"detectron2._C.{name} is a compiled op, and this detectron2 was built without its C++ "
        "extension (pb1-detectron2==0.6 ships no C++ sources). Deformable convolution, rotated "
        "boxes and the fast COCOeval need it. Use a config without them, or install a detectron2 "
        "built from source (https://detectron2.readthedocs.io/en/latest/tutorials/install.html) "
        "and then `pip install -e .` in this repository."
    )
