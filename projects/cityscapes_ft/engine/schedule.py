"""The training schedule a run actually uses: epochs converted to iterations, the recipe rescaled to
the run's global batch, and a summary that the trainer logs and writes next to the checkpoints."""
import math
from dataclasses import asdict, dataclass, fields
from typing import Optional, Tuple

from ..errors import ConfigNotRunnable

LR_SCALING_RULES = {
    "linear": lambda ratio: ratio,
    "sqrt": math.sqrt,
    "none": lambda ratio: 1.0,
}
# Keys whose values epoch mode computes; a command-line override of them would be silently lost.
EPOCH_MODE_COMPUTED_KEYS = ("SOLVER.MAX_ITER", "SOLVER.STEPS")


def per_process_batch(ims_per_batch: int, world_size: int, accumulation_steps: int) -> int:
    """Images per forward pass in each process; refuses a global batch that does not split."""
    if accumulation_steps < 1 or ims_per_batch % (world_size * accumulation_steps):
        raise ConfigNotRunnable(
            f"SOLVER.IMS_PER_BATCH {ims_per_batch} must divide by the number of processes "
            f"({world_size}) x CITYSCAPES_FT.GRADIENT_ACCUMULATION_STEPS ({accumulation_steps})"
        )
    return ims_per_batch // (world_size * accumulation_steps)


@dataclass
class TrainingSchedule:
    """What the run does, in iterations (= optimizer steps), with where each number came from."""

    unit: str
    dataset_size: Optional[int]
    world_size: int
    ims_per_batch: int
    accumulation_steps: int
    reference_ims_per_batch: int
    lr_scaling: str
    lr_scale: float
    base_lr: float
    warmup_iters: int
    warmup_factor: float
    steps: Tuple[int, ...]
    gamma: float
    max_iter: int
    checkpoint_period: int
    eval_period: int
    backbone_freeze_iters: int

    @property
    def iters_per_epoch(self) -> Optional[float]:
        return self.dataset_size / self.ims_per_batch if self.dataset_size else None

    def epochs(self, iters: int) -> str:
        ipe = self.iters_per_epoch
        return f"{iters / ipe:.2f} epochs" if ipe else "epochs unknown"

    def as_dict(self) -> dict:
        return dict(asdict(self), iters_per_epoch=self.iters_per_epoch)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainingSchedule":
        """From as_dict()'s output (OUTPUT_DIR/schedule.json)."""
        return cls(**{f.name: data[f.name] for f in fields(cls)})

    def rows(self):
        """(what, value) pairs: the start-of-training log and the run report show these."""
        per_process = per_process_batch(self.ims_per_batch, self.world_size, self.accumulation_steps)
        ipe = self.iters_per_epoch

        def iters(n):
            return f"{n} ({self.epochs(n)})"

        return [
            ("training images after filtering", self.dataset_size),
            ("global batch", f"{self.ims_per_batch} images per optimizer step = {self.world_size} "
                             f"process(es) x {per_process} image(s) x {self.accumulation_steps} "
                             "accumulation step(s)"),
            ("iterations per epoch", f"{ipe:.2f}" if ipe else "unknown"),
            ("warmup iterations", f"{iters(self.warmup_iters)} from {self.warmup_factor} x LR"),
            (f"LR steps (x{self.gamma})", ", ".join(iters(s) for s in self.steps) or "none"),
            ("max iterations", iters(self.max_iter)),
            ("base LR", f"{self.base_lr:g} (= config LR x {self.lr_scale:g}: {self.lr_scaling} scaling "
                        f"from reference batch {self.reference_ims_per_batch} to {self.ims_per_batch})"),
            ("backbone frozen, iterations", iters(self.backbone_freeze_iters)),
            ("checkpoints", f"every {self.checkpoint_period} iterations"),
            ("evaluation", f"every {self.eval_period} iterations" if self.eval_period else "at the end only"),
        ]

    def format(self) -> str:
        return "\n".join([f"Training schedule (stated in {self.unit}):"]
                         + [f"  {what}: {value}" for what, value in self.rows()])


def resolve_training_schedule(cfg, world_size: int, dataset_size: int):
    """Returns (cfg, TrainingSchedule): a copy of cfg whose SOLVER/TEST/CITYSCAPES_FT iteration
    values are the ones to run with `world_size` processes. Idempotent: the returned config states
    everything in iterations at its own batch, so resolving it again changes nothing.

    dataset_size: the number of training images after filtering (epochs need it; in iteration
    mode it is only reported)."""
    cfg = cfg.clone()
    cfg.defrost()
    sched, solver = cfg.CITYSCAPES_FT.SCHEDULE, cfg.SOLVER
    if sched.UNIT not in ("iterations", "epochs"):
        raise ConfigNotRunnable(
            f"CITYSCAPES_FT.SCHEDULE.UNIT is '{sched.UNIT}'; expected 'iterations' or 'epochs'"
        )
    if sched.LR_SCALING not in LR_SCALING_RULES:
        raise ConfigNotRunnable(
            f"CITYSCAPES_FT.SCHEDULE.LR_SCALING is '{sched.LR_SCALING}'; expected one of "
            f"{', '.join(LR_SCALING_RULES)}"
        )
    configured_batch = solver.IMS_PER_BATCH
    batch = configured_batch
    # detectron2's REFERENCE_WORLD_SIZE: the per-process batch stays, the global batch follows.
    if solver.REFERENCE_WORLD_SIZE and solver.REFERENCE_WORLD_SIZE != world_size:
        if configured_batch % solver.REFERENCE_WORLD_SIZE:
            raise ConfigNotRunnable(
                f"SOLVER.IMS_PER_BATCH {configured_batch} does not divide by "
                f"SOLVER.REFERENCE_WORLD_SIZE {solver.REFERENCE_WORLD_SIZE}"
            )
        batch = configured_batch // solver.REFERENCE_WORLD_SIZE * world_size
        solver.REFERENCE_WORLD_SIZE = world_size
    accumulation = cfg.CITYSCAPES_FT.GRADIENT_ACCUMULATION_STEPS
    per_process_batch(batch, world_size, accumulation)
    reference = sched.REFERENCE_IMS_PER_BATCH or configured_batch
    ratio = batch / reference
    lr_scale = LR_SCALING_RULES[sched.LR_SCALING](ratio)

    def fewer(iters):  # an iteration count stated at the reference batch, at this batch
        return int(round(iters / ratio))

    solver.IMS_PER_BATCH = batch
    solver.BASE_LR = solver.BASE_LR * lr_scale
    solver.WARMUP_ITERS = fewer(solver.WARMUP_ITERS)
    freeze = cfg.CITYSCAPES_FT.BACKBONE_FREEZE
    size = dataset_size
    if sched.UNIT == "epochs":
        if sched.MAX_EPOCHS <= 0:
            raise ConfigNotRunnable(
                "CITYSCAPES_FT.SCHEDULE.UNIT is 'epochs' but CITYSCAPES_FT.SCHEDULE.MAX_EPOCHS is "
                f"{sched.MAX_EPOCHS}; set the training length in epochs"
            )
        late = [s for s in sched.STEPS_EPOCHS if s >= sched.MAX_EPOCHS]
        if late:
            raise ConfigNotRunnable(
                f"CITYSCAPES_FT.SCHEDULE.STEPS_EPOCHS {tuple(sched.STEPS_EPOCHS)} must all be "
                f"smaller than MAX_EPOCHS ({sched.MAX_EPOCHS})"
            )
        if not size:
            raise ConfigNotRunnable(
                f"The schedule is in epochs but DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)} has no "
                "training images after filtering"
            )

        def iters(epochs):
            return int(math.ceil(epochs * size / batch - 1e-9))

        solver.MAX_ITER = iters(sched.MAX_EPOCHS)
        solver.STEPS = tuple(iters(e) for e in sched.STEPS_EPOCHS)
        if sched.CHECKPOINT_PERIOD_EPOCHS > 0:
            solver.CHECKPOINT_PERIOD = max(1, iters(sched.CHECKPOINT_PERIOD_EPOCHS))
        if sched.EVAL_PERIOD_EPOCHS > 0:
            cfg.TEST.EVAL_PERIOD = max(1, iters(sched.EVAL_PERIOD_EPOCHS))
        if freeze.EPOCHS > 0:
            freeze.ITERS = iters(freeze.EPOCHS)
    else:
        solver.MAX_ITER = fewer(solver.MAX_ITER)
        solver.STEPS = tuple(fewer(s) for s in solver.STEPS)
        solver.CHECKPOINT_PERIOD = max(1, fewer(solver.CHECKPOINT_PERIOD))
        cfg.TEST.EVAL_PERIOD = fewer(cfg.TEST.EVAL_PERIOD)
        if freeze.EPOCHS > 0:
            if not size:
                raise ConfigNotRunnable(
                    "CITYSCAPES_FT.BACKBONE_FREEZE.EPOCHS needs the training set's size, but "
                    f"DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)} has no images after filtering"
                )
            freeze.ITERS = int(math.ceil(freeze.EPOCHS * size / batch - 1e-9))
        else:
            freeze.ITERS = fewer(freeze.ITERS)
    schedule = TrainingSchedule(
        unit=sched.UNIT, dataset_size=size, world_size=world_size, ims_per_batch=batch,
        accumulation_steps=accumulation, reference_ims_per_batch=reference,
        lr_scaling=sched.LR_SCALING, lr_scale=lr_scale, base_lr=solver.BASE_LR,
        warmup_iters=solver.WARMUP_ITERS, warmup_factor=solver.WARMUP_FACTOR,
        steps=tuple(solver.STEPS), gamma=solver.GAMMA, max_iter=solver.MAX_ITER,
        checkpoint_period=solver.CHECKPOINT_PERIOD, eval_period=cfg.TEST.EVAL_PERIOD,
        backbone_freeze_iters=freeze.ITERS,
    )
    # The resolved form: iterations at this batch, so that resolving again is a no-op.
    sched_unit = sched.UNIT
    sched.UNIT = "iterations"
    sched.REFERENCE_IMS_PER_BATCH = batch
    freeze.EPOCHS = 0.0
    # The one check of steps against the length, on the values this run uses (computed from
    # epochs, or rescaled to its batch).
    late = [s for s in solver.STEPS if s >= solver.MAX_ITER]
    if late:
        raise ConfigNotRunnable(
            f"SOLVER.STEPS {tuple(solver.STEPS)} must all be smaller than SOLVER.MAX_ITER "
            f"({solver.MAX_ITER}) as this run resolves them ({sched_unit} at global batch "
            f"{batch}); lower the steps or lengthen the run"
        )
    return cfg, schedule


def check_no_overridden_computed_keys(cfg, opts):
    """In epoch mode SOLVER.MAX_ITER/STEPS are computed: refuse command-line values for them."""
    if cfg.CITYSCAPES_FT.SCHEDULE.UNIT != "epochs":
        return
    given = [str(k) for k in list(opts)[0::2] if str(k) in EPOCH_MODE_COMPUTED_KEYS]
    if given:
        raise ConfigNotRunnable(
            f"{', '.join(given)} given on the command line, but this config states its schedule "
            "in epochs (CITYSCAPES_FT.SCHEDULE.UNIT epochs), which computes them. Set "
            "CITYSCAPES_FT.SCHEDULE.MAX_EPOCHS / STEPS_EPOCHS instead, or add "
            "`CITYSCAPES_FT.SCHEDULE.UNIT iterations` to use SOLVER.MAX_ITER / SOLVER.STEPS"
        )
