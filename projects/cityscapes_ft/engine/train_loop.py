"""One optimizer step from several forward/backward passes, optionally in mixed precision."""
import contextlib
import time

import torch
from detectron2.engine import SimpleTrainer
from torch.nn.parallel import DistributedDataParallel


class GradientAccumulationTrainer(SimpleTrainer):
    """SimpleTrainer whose step sums the gradients of `accumulation_steps` batches from the data
    loader (each loss divided by their number, so the step equals one on their union for losses
    that average over images), then steps the optimizer once. Under DDP only the last backward
    all-reduces. With amp=True (CUDA) the forward runs under autocast and a GradScaler scales the
    loss; gradients are unscaled before the optimizer's step, so clipping sees true values.
    One call = one iteration of the schedule = one optimizer step."""

    def __init__(self, model, data_loader, optimizer, accumulation_steps: int = 1, amp: bool = False,
                 grad_scaler=None):
        super().__init__(model, data_loader, optimizer)
        if accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
        self.accumulation_steps = accumulation_steps
        self.amp = amp
        self.grad_scaler = grad_scaler if grad_scaler is not None else (
            torch.amp.GradScaler("cuda") if amp else None
        )

    def run_step(self):
        """One optimizer step over GRADIENT_ACCUMULATION_STEPS batches, with AMP when enabled."""
        assert self.model.training, "[GradientAccumulationTrainer] model was changed to eval mode!"
        self.optimizer.zero_grad()
        data_time = 0.0
        summed = {}
        n = self.accumulation_steps
        for k in range(n):
            start = time.perf_counter()
            data = next(self._data_loader_iter)
            data_time += time.perf_counter() - start
            last = k == n - 1
            skip_sync = not last and isinstance(self.model, DistributedDataParallel)
            with self.model.no_sync() if skip_sync else contextlib.nullcontext():
                with torch.autocast("cuda") if self.amp else contextlib.nullcontext():
                    loss_dict = self.model(data)
                    if isinstance(loss_dict, torch.Tensor):
                        loss_dict = {"total_loss": loss_dict}
                    losses = sum(loss_dict.values()) / n
                (self.grad_scaler.scale(losses) if self.amp else losses).backward()
            for key, value in loss_dict.items():
                summed[key] = summed.get(key, 0.0) + value.detach().float() / n
        if hasattr(self, "after_backward"):  # upstream detectron2's hook point; v0.6 has none
            self.after_backward()
        self._write_metrics(summed, data_time)
        if self.amp:
            self.grad_scaler.unscale_(self.optimizer)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def state_dict(self):
        """The trainer's state with the gradient scaler's (AMP)."""
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        """Restores what state_dict saved."""
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
