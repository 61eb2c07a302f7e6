"""detectron2.export (TracingAdapter, and detectron2.utils.analysis, which imports it) without caffe2.

detectron2 v0.6's `detectron2/export/__init__.py` imports its caffe2 exporter before anything
else, and torch 2 ships no caffe2, so the whole package, tracing included, fails to import.
install/setup_env.sh patches our own build; this module serves any other v0.6 (a user's own):
when, and only when, that import fails for want of caffe2, it registers the package without
running its __init__ and imports the pieces that need no caffe2. Upstream detectron2 (which
guards the caffe2 import itself) and a patched v0.6 import normally and are left untouched.
"""
import importlib
import os
import sys
import types


def import_detectron2_export() -> types.ModuleType:
    """detectron2.export, with TracingAdapter, scripting_with_instances and dump_torchscript_IR."""
    try:
        import detectron2.export as export

        return export
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("caffe2"):
            raise
    import detectron2

    folder = os.path.join(os.path.dirname(detectron2.__file__), "export")
    package = types.ModuleType("detectron2.export", "detectron2.export without its caffe2 exporter")
    package.__path__ = [folder]
    package.__file__ = os.path.join(folder, "__init__.py")
    package.__package__ = "detectron2.export"
    sys.modules["detectron2.export"] = package
    detectron2.export = package
    flatten = importlib.import_module("detectron2.export.flatten")
    torchscript = importlib.import_module("detectron2.export.torchscript")
    package.TracingAdapter = flatten.TracingAdapter
    package.scripting_with_instances = torchscript.scripting_with_instances
    package.dump_torchscript_IR = torchscript.dump_torchscript_IR
    return package


def import_detectron2_analysis() -> types.ModuleType:
    """detectron2.utils.analysis (fvcore's FLOP and activation counts on detectron2 models)."""
    import_detectron2_export()
    return importlib.import_module("detectron2.utils.analysis")
