"""Training hooks: staged backbone freezing and an LR hook that records every model part's LR."""
import logging

from detectron2.engine import HookBase, hooks
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from .ddp import wrap_for_distributed
from .optimizer import MODEL_PARTS, backbone_modules

logger = logging.getLogger(__name__)


class StagedBackboneFreeze(HookBase):
    """Freezes the backbone (ResNet; with include_fpn the whole model.backbone) for the first
    `freeze_iters` iterations, then trains it.

    Frozen means requires_grad=False: autograd does not go through those layers, they get no
    gradient, SGD leaves them (and their momentum and weight decay) alone, and BatchNorm layers in
    them stop updating statistics; the parameters stay bit-identical. The optimizer already holds
    them in their own parameter groups (built before freezing), so after the switch they train at
    their own LR. DistributedDataParallel fixes its parameter set when it wraps the model, so the
    hook re-wraps the trainer's `model` at each change. The state follows the iteration, so --resume before or
    after the switch continues in the right phase; layers frozen by MODEL.BACKBONE.FREEZE_AT
    stay frozen."""

    def __init__(self, freeze_iters: int, include_fpn: bool = False):
        self.freeze_iters = int(freeze_iters)
        self.include_fpn = include_fpn
        self.frozen = False
        self.unfrozen_at = None
        self._params = []
        self._batch_norms = []
        self._checkpoint_state = None

    @property
    def part(self) -> str:
        """What is frozen, in words."""
        return "backbone and FPN" if self.include_fpn else "backbone"

    def before_train(self):
        """Freezes the backbone's trainable parameters if the run starts (or resumes) inside the
        frozen phase."""
        module = backbone_modules(self.trainer.model, self.include_fpn)
        # Only what is trainable now; FREEZE_AT's layers are not ours to unfreeze.
        self._params = [p for p in module.parameters() if p.requires_grad]
        self._batch_norms = [m for m in module.modules() if isinstance(m, _BatchNorm)]
        frozen = self.trainer.iter < self.freeze_iters
        if self._checkpoint_state is not None and self._checkpoint_state["frozen"] != frozen:
            logger.warning(
                f"The checkpoint's {self.part} was {'frozen' if self._checkpoint_state['frozen'] else 'trained'}, "
                f"but with CITYSCAPES_FT.BACKBONE_FREEZE at {self.freeze_iters} iterations, "
                f"iteration {self.trainer.iter} is {'frozen' if frozen else 'trained'}: following the config"
            )
        self._set_frozen(frozen)

    def before_step(self):
        """Unfreezes at the end of the frozen phase; while frozen, keeps its BatchNorms in eval mode."""
        if not self.frozen:
            return
        if self.trainer.iter >= self.freeze_iters:
            self._set_frozen(False)
            self.unfrozen_at = self.trainer.iter
        else:
            # Evaluation puts the whole model back in training mode.
            for m in self._batch_norms:
                m.eval()

    def after_step(self):
        """Records `backbone_frozen` (1 or 0) for this iteration."""
        self.trainer.storage.put_scalar("backbone_frozen", float(self.frozen), smoothing_hint=False)

    def _set_frozen(self, frozen: bool):
        if frozen == self.frozen:
            return
        for p in self._params:
            p.requires_grad_(not frozen)
        for m in self._batch_norms:
            m.train(not frozen and self.trainer.model.training)
        self.frozen = frozen
        if isinstance(self.trainer.model, DistributedDataParallel):
            self.trainer.model = wrap_for_distributed(self.trainer.model)
        n = sum(p.numel() for p in self._params)
        if frozen:
            logger.info(
                f"Staged freezing: {self.part} frozen ({len(self._params)} tensors, {n} values) "
                f"until iteration {self.freeze_iters}"
            )
        else:
            logger.info(
                f"Staged freezing: {self.part} trains from iteration {self.trainer.iter} "
                f"({len(self._params)} tensors, {n} values)"
            )

    def state_dict(self):
        """Whether the backbone is frozen, the phase length and when it was unfrozen, for --resume."""
        return {"frozen": self.frozen, "freeze_iters": self.freeze_iters, "unfrozen_at": self.unfrozen_at}

    def load_state_dict(self, state_dict):
        """Keeps what state_dict saved; before_train applies it."""
        self._checkpoint_state = dict(state_dict)
        self.unfrozen_at = state_dict.get("unfrozen_at")


class LayerwiseLRScheduler(hooks.LRScheduler):
    """detectron2's LRScheduler hook (the one LR hook), recording `lr` as the scheduled BASE_LR
    and `lr/<part>` as each part's LR (multiplier included), instead of one group's LR."""

    def after_step(self):
        """Steps the scheduler and records `lr` and each part's `lr/<part>`."""
        groups = [g for g in self._optimizer.param_groups if "part" in g]
        if not groups:
            return super().after_step()
        storage = self.trainer.storage
        reference = next((g for g in groups if g["lr_factor"] == 1.0), None)
        reference = reference or next((g for g in groups if g["lr_factor"] > 0), groups[0])
        scheduled = reference["lr"] / reference["lr_factor"] if reference["lr_factor"] > 0 else 0.0
        storage.put_scalar("lr", scheduled, smoothing_hint=False)
        for part in MODEL_PARTS:
            group = next((g for g in groups if g["name"] == f"{part}/weight"), None)
            group = group or next((g for g in groups if g["part"] == part), None)
            if group is not None:
                storage.put_scalar(f"lr/{part}", group["lr"], smoothing_hint=False)
        self.scheduler.step()


class PeriodicCheckpointerAfterEvaluation(hooks.PeriodicCheckpointer):
    """detectron2's PeriodicCheckpointer, whose last checkpoint (model_final.pth) is written in
    after_train instead of the last iteration's after_step: the final evaluation and the best
    checkpoint's check run in after_train (detectron2's EvalHook and BestCheckpointer), and the
    final checkpoint must hold their state, or a --resume from it would compare later evaluations
    with the best score of the evaluation before. Place it after those hooks."""

    def after_step(self):
        """Periodic checkpoints; not the last iteration's (after_train writes it)."""
        if self.trainer.iter + 1 < self.trainer.max_iter:
            super().after_step()

    def after_train(self):
        """The last iteration's checkpoints (model_final.pth), once the run has finished (the
        trainer's `iter` is then max_iter, as detectron2's TrainerBase leaves it)."""
        if self.trainer.iter >= self.trainer.max_iter:
            self.step(self.trainer.max_iter - 1)
