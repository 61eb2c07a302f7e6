"""The training schedule a run actually uses: epochs converted to iterations, the recipe rescaled to
the run's global batch, and a summary that the trainer logs and the run report shows."""
import math
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

from .config import LR_SCALING_RULES
from .errors import ConfigNotRunnable



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
    # Keys the user set (key -> where), used as given (None: not known, the schedule was read from
    # a resolved config); warnings about derivations they stopped.
    given: Optional[Dict[str, str]] = field(default_factory=dict)
    notes: Tuple[str, ...] = ()

    @property
    def iters_per_epoch(self) -> Optional[float]:
        """Iterations per pass over the training set, None where its size is unknown."""
        return self.dataset_size / self.ims_per_batch if self.dataset_size else None

    def epochs(self, iters: int) -> str:
        """`iters` in passes over the training set, as text."""
        ipe = self.iters_per_epoch
        return f"{iters / ipe:.2f} epochs" if ipe else "epochs unknown"

    @classmethod
    def of_resolved_config(cls, cfg, dataset_size: Optional[int] = None) -> "TrainingSchedule":
        """The schedule that a resolved config (OUTPUT_DIR/config.yaml) runs: what the run report
        shows, derived from the one file that describes the run."""
        solver, freeze = cfg.SOLVER, cfg.CITYSCAPES_FT.BACKBONE_FREEZE
        return cls(
            unit=cfg.CITYSCAPES_FT.SCHEDULE.UNIT, dataset_size=dataset_size, world_size=None,
            ims_per_batch=solver.IMS_PER_BATCH,
            accumulation_steps=cfg.CITYSCAPES_FT.GRADIENT_ACCUMULATION_STEPS,
            reference_ims_per_batch=solver.IMS_PER_BATCH, lr_scaling="none", lr_scale=1.0,
            base_lr=solver.BASE_LR, warmup_iters=solver.WARMUP_ITERS, warmup_factor=solver.WARMUP_FACTOR,
            steps=tuple(solver.STEPS), gamma=solver.GAMMA, max_iter=solver.MAX_ITER,
            checkpoint_period=solver.CHECKPOINT_PERIOD, eval_period=cfg.TEST.EVAL_PERIOD,
            backbone_freeze_iters=freeze.ITERS, given=None,
        )

    def rows(self):
        """(what, value) pairs: the start-of-training log and the run report show these."""
        ipe = self.iters_per_epoch

        def iters(n):
            return f"{n} ({self.epochs(n)})"

        if self.world_size is None:
            batch = (f"{self.ims_per_batch} images per optimizer step ({self.accumulation_steps} "
                     "accumulation step(s))")
            lr = f"{self.base_lr:g}"
        else:
            per_process = per_process_batch(self.ims_per_batch, self.world_size, self.accumulation_steps)
            batch = (f"{self.ims_per_batch} images per optimizer step = {self.world_size} process(es) x "
                     f"{per_process} image(s) x {self.accumulation_steps} accumulation step(s)")
            lr = (f"{self.base_lr:g} (= config LR x {self.lr_scale:g}: {self.lr_scaling} scaling "
                  f"from reference batch {self.reference_ims_per_batch} to {self.ims_per_batch})")
        rows = [
            ("training images after filtering", self.dataset_size),
            ("global batch", batch),
            ("iterations per epoch", f"{ipe:.2f}" if ipe else "unknown"),
            ("warmup iterations", f"{iters(self.warmup_iters)} from {self.warmup_factor} x LR"),
            (f"LR steps (x{self.gamma})", ", ".join(iters(s) for s in self.steps) or "none"),
            ("max iterations", iters(self.max_iter)),
            ("base LR", lr),
            ("backbone frozen, iterations", iters(self.backbone_freeze_iters)),
            ("checkpoints", f"every {self.checkpoint_period} iterations"),
            ("evaluation", f"every {self.eval_period} iterations" if self.eval_period else "at the end only"),
        ]
        if self.given is not None:
            rows.append(("used as given", ", ".join(f"{k} ({where})" for k, where in self.given.items()) or "nothing"))
        return rows

    def format(self) -> str:
        """The schedule as logged at the start of training."""
        return "\n".join([f"Training schedule (stated in {self.unit}):"]
                         + [f"  {what}: {value}" for what, value in self.rows()])


def resolve_training_schedule(cfg, world_size: int, dataset_size: Optional[int],
                              explicit: Mapping[str, str] = None):
    """Returns (cfg, TrainingSchedule): a copy of cfg whose SOLVER/TEST/CITYSCAPES_FT iteration
    values are the ones to run with `world_size` processes. Idempotent: the returned config states
    everything in iterations at its own batch, so resolving it again changes nothing.

    dataset_size: the number of training images after filtering (epochs need it; in iteration
    mode it is only reported).
    explicit: key -> where the user set it (config.command_line_keys). Those values are used
    exactly; derivations (epochs to iterations, scaling to another batch) fill only the others,
    and each derivation an explicit value stops is noted in `schedule.notes`
    (config.SCHEDULE_SCALING_RULE).
    """
    explicit = dict(explicit or {})
    notes = []
    cfg = cfg.clone()
    cfg.defrost()
    sched, solver = cfg.CITYSCAPES_FT.SCHEDULE, cfg.SOLVER
    freeze = cfg.CITYSCAPES_FT.BACKBONE_FREEZE

    def choose(key, given, derived):
        if key not in explicit:
            return derived
        if derived != given:
            notes.append(f"{key} {given} ({explicit[key]}) is used as given; the recipe would give "
                         f"{derived}")
        return given

    configured_batch = solver.IMS_PER_BATCH
    batch = configured_batch
    # detectron2's REFERENCE_WORLD_SIZE: the per-process batch stays, the global batch follows.
    if solver.REFERENCE_WORLD_SIZE and solver.REFERENCE_WORLD_SIZE != world_size:
        if configured_batch % solver.REFERENCE_WORLD_SIZE:
            raise ConfigNotRunnable(
                f"SOLVER.IMS_PER_BATCH {configured_batch} does not divide by "
                f"SOLVER.REFERENCE_WORLD_SIZE {solver.REFERENCE_WORLD_SIZE}"
            )
        derived = configured_batch // solver.REFERENCE_WORLD_SIZE * world_size
        if "SOLVER.REFERENCE_WORLD_SIZE" in explicit:  # both typed: a per-process batch
            batch = derived
        else:
            batch = choose("SOLVER.IMS_PER_BATCH", configured_batch, derived)
        solver.REFERENCE_WORLD_SIZE = world_size
    accumulation = cfg.CITYSCAPES_FT.GRADIENT_ACCUMULATION_STEPS
    per_process_batch(batch, world_size, accumulation)
    reference = sched.REFERENCE_IMS_PER_BATCH or configured_batch
    ratio = batch / reference
    lr_scale = LR_SCALING_RULES[sched.LR_SCALING](ratio)
    size = dataset_size

    def fewer(iters):  # an iteration count stated at the reference batch, at this batch
        return int(round(iters / ratio))

    def from_epochs(epochs, what):
        if not size:
            raise ConfigNotRunnable(
                f"{what} is in epochs, but DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)} has no "
                "training images after filtering"
            )
        return int(math.ceil(epochs * size / batch - 1e-9))

    solver.IMS_PER_BATCH = batch
    solver.BASE_LR = choose("SOLVER.BASE_LR", solver.BASE_LR, solver.BASE_LR * lr_scale)
    solver.WARMUP_ITERS = choose("SOLVER.WARMUP_ITERS", solver.WARMUP_ITERS, fewer(solver.WARMUP_ITERS))
    if sched.UNIT == "epochs":
        if sched.MAX_EPOCHS <= 0 and "SOLVER.MAX_ITER" not in explicit:
            raise ConfigNotRunnable(
                "CITYSCAPES_FT.SCHEDULE.UNIT is 'epochs' but CITYSCAPES_FT.SCHEDULE.MAX_EPOCHS is "
                f"{sched.MAX_EPOCHS}; set the training length in epochs"
            )
        what = "The schedule (CITYSCAPES_FT.SCHEDULE.UNIT epochs)"
        max_iter = from_epochs(sched.MAX_EPOCHS, what) if sched.MAX_EPOCHS > 0 else solver.MAX_ITER
        steps = tuple(from_epochs(e, what) for e in sched.STEPS_EPOCHS)
        checkpoint_period = (max(1, from_epochs(sched.CHECKPOINT_PERIOD_EPOCHS, what))
                             if sched.CHECKPOINT_PERIOD_EPOCHS > 0 else max(1, fewer(solver.CHECKPOINT_PERIOD)))
        eval_period = (max(1, from_epochs(sched.EVAL_PERIOD_EPOCHS, what))
                       if sched.EVAL_PERIOD_EPOCHS > 0 else fewer(cfg.TEST.EVAL_PERIOD))
    else:
        max_iter = fewer(solver.MAX_ITER)
        steps = tuple(fewer(s) for s in solver.STEPS)
        checkpoint_period = max(1, fewer(solver.CHECKPOINT_PERIOD))
        eval_period = fewer(cfg.TEST.EVAL_PERIOD)
    solver.MAX_ITER = choose("SOLVER.MAX_ITER", solver.MAX_ITER, max_iter)
    solver.STEPS = tuple(choose("SOLVER.STEPS", tuple(solver.STEPS), steps))
    solver.CHECKPOINT_PERIOD = choose("SOLVER.CHECKPOINT_PERIOD", solver.CHECKPOINT_PERIOD, checkpoint_period)
    cfg.TEST.EVAL_PERIOD = choose("TEST.EVAL_PERIOD", cfg.TEST.EVAL_PERIOD, eval_period)
    freeze_iters = (from_epochs(freeze.EPOCHS, "CITYSCAPES_FT.BACKBONE_FREEZE.EPOCHS")
                    if freeze.EPOCHS > 0 else fewer(freeze.ITERS))
    freeze.ITERS = choose("CITYSCAPES_FT.BACKBONE_FREEZE.ITERS", freeze.ITERS, freeze_iters)

    # As lenient as detectron2: LR steps at or past the end are dropped, a long warmup is allowed.
    late = [s for s in solver.STEPS if s >= solver.MAX_ITER]
    if late:
        solver.STEPS = tuple(s for s in solver.STEPS if s < solver.MAX_ITER)
        notes.append(f"SOLVER.STEPS {tuple(late)} are not before the run's end (SOLVER.MAX_ITER "
                     f"{solver.MAX_ITER}) and are dropped, as detectron2 does")
    if solver.WARMUP_ITERS > solver.MAX_ITER:
        notes.append(f"SOLVER.WARMUP_ITERS {solver.WARMUP_ITERS} is longer than the run "
                     f"({solver.MAX_ITER} iterations): the LR rises over the whole run and reaches "
                     "SOLVER.BASE_LR only at its end")
    schedule = TrainingSchedule(
        unit=sched.UNIT, dataset_size=size, world_size=world_size, ims_per_batch=batch,
        accumulation_steps=accumulation, reference_ims_per_batch=reference,
        lr_scaling=sched.LR_SCALING, lr_scale=lr_scale, base_lr=solver.BASE_LR,
        warmup_iters=solver.WARMUP_ITERS, warmup_factor=solver.WARMUP_FACTOR,
        steps=tuple(solver.STEPS), gamma=solver.GAMMA, max_iter=solver.MAX_ITER,
        checkpoint_period=solver.CHECKPOINT_PERIOD, eval_period=cfg.TEST.EVAL_PERIOD,
        backbone_freeze_iters=freeze.ITERS, given=explicit, notes=tuple(notes),
    )
    # The resolved form: iterations at this batch, so that resolving again is a no-op.
    sched.UNIT = "iterations"
    sched.REFERENCE_IMS_PER_BATCH = batch
    freeze.EPOCHS = 0.0
    return cfg, schedule


def check_schedule_resolved(cfg, world_size: int) -> None:
    """Refuse a config whose schedule still needs resolve_training_schedule: the trainer would
    otherwise run its raw SOLVER values and silently ignore epochs or the reference batch."""
    sched = cfg.CITYSCAPES_FT.SCHEDULE
    unresolved = []
    if sched.UNIT != "iterations":
        unresolved.append(f"CITYSCAPES_FT.SCHEDULE.UNIT is {sched.UNIT!r}")
    if sched.REFERENCE_IMS_PER_BATCH not in (0, cfg.SOLVER.IMS_PER_BATCH):
        unresolved.append(f"CITYSCAPES_FT.SCHEDULE.REFERENCE_IMS_PER_BATCH {sched.REFERENCE_IMS_PER_BATCH} "
                          f"differs from SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH}")
    if cfg.SOLVER.REFERENCE_WORLD_SIZE not in (0, world_size):
        unresolved.append(f"SOLVER.REFERENCE_WORLD_SIZE {cfg.SOLVER.REFERENCE_WORLD_SIZE} differs from "
                          f"the {world_size} process(es) of this run")
    if cfg.CITYSCAPES_FT.BACKBONE_FREEZE.EPOCHS > 0:
        unresolved.append("CITYSCAPES_FT.BACKBONE_FREEZE.EPOCHS is set")
    if unresolved:
        raise ConfigNotRunnable(
            "CityscapesFTTrainer takes a config whose schedule is resolved for the run ("
            + "; ".join(unresolved) + "). Build it with cityscapes_ft.engine.setup_cfg(args), as "
            "tools/train_net.py does, or `cfg, schedule = cityscapes_ft.engine.resolve_config(cfg)`"
        )
