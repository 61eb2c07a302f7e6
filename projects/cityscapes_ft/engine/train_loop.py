"""One optimizer step from several forward/backward passes, optionally in mixed precision.

detectron2's SimpleTrainer/AMPTrainer take one batch per optimizer step; accumulation needs
several, with DDP's all-reduce only on the last backward, so the step is ours (ARCHITECTURE.md)."""
import contextlib
import time

import torch
from torch.nn.parallel import DistributedDataParallel


class GradientAccumulationStep:
    """The optimizer step of the trainer, in two halves so that the trainer can check and record
    the losses between them (as detectron2's step does):

    - `forward_backward(model, batches)` sums the gradients of `accumulation_steps` batches
      (each loss divided by their number, so the step equals one on their union for losses that
      average over images); under DDP only the last backward all-reduces. With amp=True (CUDA)
      the forward runs under autocast and a GradScaler scales the loss.
    - `optimizer_step()` steps the optimizer once (AMP: gradients unscaled first, so clipping
      sees true values).

    Its state (`state_dict`: the optimizer's and the grad scaler's) is what detectron2's trainers
    keep under "_trainer" in a checkpoint."""

    def __init__(self, optimizer, accumulation_steps: int = 1, amp: bool = False, grad_scaler=None,
                 clip_gradients=None):
        if accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
        self.optimizer = optimizer
        self.accumulation_steps = accumulation_steps
        self.amp = amp
        self.clip_gradients = clip_gradients  # called with the optimizer before each step, or None
        self.grad_scaler = grad_scaler if grad_scaler is not None else (
            torch.amp.GradScaler("cuda") if amp else None
        )

    def forward_backward(self, model, batches):
        """Gradients of the next `accumulation_steps` batches of the iterator `batches`; returns
        (loss terms averaged over those batches, detached; seconds spent waiting for data)."""
        assert model.training, "GradientAccumulationStep: the model was left in eval mode"
        self.optimizer.zero_grad()
        data_time = 0.0
        summed = {}
        n = self.accumulation_steps
        for k in range(n):
            start = time.perf_counter()
            data = next(batches)
            data_time += time.perf_counter() - start
            skip_sync = k < n - 1 and isinstance(model, DistributedDataParallel)
            with model.no_sync() if skip_sync else contextlib.nullcontext():
                with torch.autocast("cuda") if self.amp else contextlib.nullcontext():
                    loss_dict = model(data)
                    if isinstance(loss_dict, torch.Tensor):
                        loss_dict = {"total_loss": loss_dict}
                    losses = sum(loss_dict.values()) / n
                (self.grad_scaler.scale(losses) if self.amp else losses).backward()
            for key, value in loss_dict.items():
                summed[key] = summed.get(key, 0.0) + value.detach().float() / n
        return summed, data_time

    def optimizer_step(self):
        """One optimizer step with the accumulated gradients (clipped first, if asked)."""
        if self.amp:
            self.grad_scaler.unscale_(self.optimizer)
        if self.clip_gradients is not None:
            self.clip_gradients(self.optimizer)
        if self.amp:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def state_dict(self):
        """The optimizer's state (momentum) and, with AMP, the gradient scaler's."""
        ret = {"optimizer": self.optimizer.state_dict()}
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        """Restores what state_dict saved (a checkpoint of detectron2's own trainer too)."""
        self.optimizer.load_state_dict(state_dict["optimizer"])
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
