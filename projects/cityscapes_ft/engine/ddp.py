"""The training model in and out of DistributedDataParallel."""
import gc

from detectron2.engine import create_ddp_model
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel


def unwrap(model):
    """The model inside a DistributedDataParallel wrapper, or the model itself."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def wrap_for_distributed(model):
    """The model in DistributedDataParallel when the run has several processes (detectron2's
    create_ddp_model), on CUDA or on CPU over gloo: DDP takes device_ids only for CUDA models. A
    model already wrapped is wrapped anew, which takes the parameters that require a gradient now
    (DDP fixes that set when it wraps)."""
    if isinstance(model, DistributedDataParallel):
        module = model.module
        del model
        gc.collect()  # the old wrapper's reducer hooks must be gone before the next backward
        model = module
    on_cuda = next(model.parameters()).device.type == "cuda"
    return create_ddp_model(
        model, broadcast_buffers=False, device_ids=[comm.get_local_rank()] if on_cuda else None
    )
