"""Every difference between detectron2 v0.6 and upstream main that cityscapes-ft meets, in one place.

Each function names the version that needs each branch. Nothing else in the package probes
detectron2's version or touches a private attribute of detectron2 or fvcore.

- `write_step_metrics`: `SimpleTrainer.write_metrics` gained a `cur_iter` argument upstream.
- `run_after_backward_hooks`: upstream's training step calls hooks' `after_backward`; v0.6 has none.
- `create_local_process_group`: upstream has `comm.create_local_process_group`; v0.6 only the
  module attribute its own `launch` sets.
- `repeat_factors_from_category_frequency`: upstream adds `sqrt` (DATALOADER.REPEAT_SQRT).
- `forget_failed_load`: upstream's `DetectionCheckpointer.load` keeps per-load state that a failed
  read leaves set, and asserts it is clear at the next load.
- `import_detectron2_export` / `import_detectron2_analysis`: v0.6's `detectron2.export` imports
  caffe2 first, which torch 2 no longer ships.
"""
import importlib
import inspect
import os
import sys
import types

import torch.distributed as dist
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.engine import SimpleTrainer, TrainerBase
from detectron2.utils import comm

# Upstream main (2022+): write_metrics(loss_dict, data_time, cur_iter, prefix=""); v0.6: no cur_iter.
_WRITE_METRICS_TAKES_ITER = "cur_iter" in inspect.signature(SimpleTrainer.write_metrics).parameters
# Upstream main: TrainerBase.after_backward runs every hook's after_backward; v0.6: no such point.
_HAS_AFTER_BACKWARD = hasattr(TrainerBase, "after_backward")
# Upstream main: repeat_factors_from_category_frequency(dataset_dicts, repeat_thresh, sqrt=True).
_REPEAT_FACTORS_TAKE_SQRT = "sqrt" in inspect.signature(
    RepeatFactorTrainingSampler.repeat_factors_from_category_frequency
).parameters


def write_step_metrics(loss_dict, data_time: float, iteration: int) -> None:
    """detectron2's own metrics of a training step (losses gathered over processes, data time);
    raises FloatingPointError on a NaN or infinite total loss, as detectron2's step does."""
    if _WRITE_METRICS_TAKES_ITER:
        SimpleTrainer.write_metrics(loss_dict, data_time, iteration)
    else:
        SimpleTrainer.write_metrics(loss_dict, data_time)


def run_after_backward_hooks(trainer) -> None:
    """The hooks' after_backward, where this detectron2 has that hook point (upstream main)."""
    if _HAS_AFTER_BACKWARD:
        trainer.after_backward()


def create_local_process_group(local_size: int) -> None:
    """The per-machine process groups that comm.get_local_rank/_size answer from (every process
    calls this, after init_process_group, with the same number of processes per machine)."""
    if hasattr(comm, "create_local_process_group"):  # upstream main
        comm.create_local_process_group(local_size)
        return
    # v0.6: detectron2's own launch assigns this module attribute; we started the processes.
    world, rank = dist.get_world_size(), dist.get_rank()
    for machine in range(world // local_size):
        group = dist.new_group(list(range(machine * local_size, (machine + 1) * local_size)))
        if machine == rank // local_size:
            comm._LOCAL_PROCESS_GROUP = group


def repeat_factors_from_category_frequency(dicts, repeat_thresh: float, sqrt: bool = True):
    """detectron2's category-frequency repeat factors (LVIS rule); `sqrt` (upstream's
    DATALOADER.REPEAT_SQRT) where this detectron2 takes it, v0.6's rule (which is sqrt) otherwise."""
    compute = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency
    if _REPEAT_FACTORS_TAKE_SQRT:
        return compute(dicts, repeat_thresh, sqrt=sqrt)
    return compute(dicts, repeat_thresh)


def forget_failed_load(checkpointer) -> None:
    """After a load that raised: clear the URL upstream's DetectionCheckpointer.load keeps while it
    loads (it asserts the attribute is None at the next load), so another file can be tried."""
    if getattr(checkpointer, "_parsed_url_during_load", None) is not None:
        checkpointer._parsed_url_during_load = None


def import_detectron2_export() -> types.ModuleType:
    """detectron2.export, with TracingAdapter, scripting_with_instances and dump_torchscript_IR.

    v0.6's `detectron2/export/__init__.py` imports its caffe2 exporter first; install/setup_env.sh
    patches our own build. For any other v0.6 (a user's own), when and only when that import fails
    for want of caffe2, the package is registered without running its __init__ and the pieces
    that need no caffe2 are imported. Upstream (which guards the import) is left untouched."""
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
