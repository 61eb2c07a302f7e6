"""DetectionCheckpointer that transfers class-specific head rows by a class map, checks the
file's SHA-256 and reports what it loaded."""
import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.data import MetadataCatalog

from ..compat import forget_failed_load
from ..errors import (
    CheckpointUnreadable,
    ConfigNotRunnable,
    OutputNotWritable,
    WeightsDigestMismatch,
    WeightsDoNotFit,
)
from .atomic_io import AtomicWritePathManager
from .head_transfer import resolve_class_map, transfer_class_rows

logger = logging.getLogger(__name__)


@dataclass
class LoadReport:
    """What one load did with each tensor: loaded, transferred by class map, fresh, unused."""
    source: str = ""
    loaded: List[str] = field(default_factory=list)
    transferred: List[str] = field(default_factory=list)
    class_pairs: List[Tuple[str, Optional[str]]] = field(default_factory=list)
    fresh: List[str] = field(default_factory=list)
    partly_fresh: List[str] = field(default_factory=list)
    unused: List[str] = field(default_factory=list)

    def format(self) -> str:
        """The report as the log shows it, long name lists shortened."""
        def names(keys, limit=12):
            shown = ", ".join(keys[:limit])
            return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")

        lines = [f"Load report for {self.source}:",
                 f"  loaded as they are:        {len(self.loaded)} tensors"]
        lines.append(f"  transferred by class map:  {len(self.transferred)} tensors"
                     + (f" ({names(self.transferred)})" if self.transferred else ""))
        if self.transferred:
            pairs = ", ".join(f"{t} <- {s if s is not None else '(fresh)'}" for t, s in self.class_pairs)
            lines.append(f"    class pairs (target <- checkpoint): {pairs}")
        if self.partly_fresh:
            lines.append(f"    rows of unmapped classes freshly initialised in: {names(self.partly_fresh)}")
        lines.append(f"  freshly initialised:       {len(self.fresh)} tensors"
                     + (f" ({names(self.fresh)})" if self.fresh else ""))
        lines.append(f"  unused from the checkpoint: {len(self.unused)} tensors"
                     + (f" ({names(self.unused)})" if self.unused else ""))
        return "\n".join(lines)


class CityscapesFTCheckpointer(DetectionCheckpointer):
    """Loads like DetectionCheckpointer (detectron2:// and http(s) URLs, model-zoo .pkl, .pth);
    when `class_map` is given and the checkpoint's class-specific head has another class count,
    each target class takes the rows of its source class first. Every load logs a LoadReport.
    Checkpoints and `last_checkpoint` are written atomically."""

    def __init__(self, model, save_dir="", *, class_map: Sequence = (), source_classes: Sequence[str] = (),
                 target_classes: Sequence[str] = (), tag_last: bool = True, strict: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        # False for side copies (model_best): `last_checkpoint` keeps naming the run's own latest.
        self.tag_last = tag_last
        # True where numbers are published or a run continues (--eval-only, --resume): any tensor
        # missing, left over or of another shape is refused instead of freshly initialised.
        self.strict = strict
        self.path_manager = AtomicWritePathManager(self.path_manager)
        self.class_map = list(class_map)
        self.source_classes = list(source_classes)
        self.target_classes = list(target_classes)
        self.last_load_report: Optional[LoadReport] = None
        # SHA-256 of the last file loaded; the digest (or prefix) the next load must match ("" none)
        self.last_sha256: Optional[str] = None
        self.expected_sha256 = ""
        self._loading = ""
        if self.class_map:
            # Validate names up front: a wrong map fails before any training starts.
            self.source_indices = resolve_class_map(self.class_map, self.target_classes, self.source_classes)

    def tag_last_checkpoint(self, last_filename_basename):
        """Names the newest checkpoint in `last_checkpoint` (written atomically), except for side
        copies made with tag_last=False (model_best), which leave it naming the run's latest."""
        if self.tag_last:
            super().tag_last_checkpoint(last_filename_basename)

    def load(self, path, *args, **kwargs):
        """DetectionCheckpointer.load, remembering the path for the load report and error messages."""
        self._loading = path
        try:
            return super().load(path, *args, **kwargs)
        except CheckpointUnreadable:
            forget_failed_load(self)  # so that --resume can go on to an older checkpoint
            raise

    def _load_file(self, f):
        digest = file_sha256(f)
        self.last_sha256 = digest
        logger.info(f"SHA-256 of {f}: {digest}")
        expected = self.expected_sha256.lower()
        if expected and not digest.startswith(expected):
            raise WeightsDigestMismatch(
                f"{self._loading} ({f}) has SHA-256 {digest}, but MODEL.WEIGHTS_SHA256 pins {expected}: "
                f"the file is corrupted or not the one pinned. Delete {f} and download it again (a "
                "detectron2:// file is fetched anew once its cached copy is gone), or correct "
                "MODEL.WEIGHTS_SHA256"
            )
        try:
            return super()._load_file(f)
        except (FileNotFoundError, IsADirectoryError):
            raise
        except Exception as e:  # torch.load / pickle on a truncated, empty or foreign file
            raise CheckpointUnreadable(
                f"Checkpoint {f} cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): "
                "it is truncated, empty or not a checkpoint. Use another checkpoint, or download or "
                "copy this one again"
            ) from e

    def save(self, name, **kwargs):
        """Save atomically; a failed write is one OutputNotWritable naming the file."""
        try:
            super().save(name, **kwargs)
        except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
            cause = e if isinstance(e, OSError) else e.__context__
            if not isinstance(cause, OSError) and "write" not in str(e):
                raise
            previous = self.get_checkpoint_file() if self.has_checkpoint() else None
            reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(e).splitlines()[0]
            raise OutputNotWritable(
                f"Could not write checkpoint {os.path.join(self.save_dir, name + '.pth')} "
                f"({reason}). " + (f"The previous checkpoint {previous} is intact. " if previous else "")
                + "Free space or fix the folder's permissions, then run again with --resume"
            ) from e

    def _load_model(self, checkpoint):
        original_keys = list(checkpoint["model"].keys())
        transferred, partly_fresh = [], []
        if self.class_map:
            transferred, partly_fresh = transfer_class_rows(
                checkpoint["model"], self.source_indices, len(self.source_classes), self.model.state_dict()
            )
        if checkpoint.get("matching_heuristics", False):
            # Align model-zoo names here (what DetectionCheckpointer would do) to know which
            # checkpoint tensor feeds which model tensor.
            self._convert_ndarray_to_tensor(checkpoint["model"])
            checkpoint["model"] = align_and_update_state_dicts(
                self.model.state_dict(), checkpoint["model"],
                c2_conversion=checkpoint.get("__author__", None) == "Caffe2",
            )
            checkpoint["matching_heuristics"] = False
        provided = {k[len("module."):] if k.startswith("module.") else k for k in checkpoint["model"]}
        incompatible = super()._load_model(checkpoint)

        model_keys = [k for k in self.model.state_dict() if k not in ("pixel_mean", "pixel_std")]
        wrong_shape = {k for k, _, _ in incompatible.incorrect_shapes}
        loaded = [k for k in model_keys if k in provided and k not in wrong_shape]
        loaded_set = set(loaded)
        renamed = {k for k in original_keys if k not in provided}
        unused = sorted(
            [k for k in provided if k not in loaded_set]
            + [k for k in renamed if not any(p.endswith("." + k) for p in loaded_set)]
        )
        transferred_model_keys = {k for k in loaded for t in transferred if k == t or k.endswith("." + t)}
        report = LoadReport(
            source=str(self._loading),
            loaded=[k for k in loaded if k not in transferred_model_keys],
            transferred=sorted(transferred_model_keys),
            class_pairs=[
                (t, self.source_classes[s] if s is not None else None)
                for t, s in zip(self.target_classes, getattr(self, "source_indices", []))
            ] if transferred else [],
            fresh=[k for k in model_keys if k not in loaded_set],
            partly_fresh=partly_fresh,
            unused=unused,
        )
        self.last_load_report = report
        logger.info(report.format())
        misfits = report.fresh + report.unused + report.partly_fresh
        if self.strict and misfits:
            shapes = {k: (tuple(c), tuple(m)) for k, c, m in incompatible.incorrect_shapes}
            listed = "; ".join(
                [f"{k}: {shapes[k][0]} in the checkpoint, {shapes[k][1]} in the model" for k in report.fresh if k in shapes]
                + [f"missing from the checkpoint: {k}" for k in report.fresh if k not in shapes]
                + [f"not in the model: {k}" for k in report.unused]
                + [f"rows of unmapped classes would be random: {k}" for k in report.partly_fresh]
            )
            raise WeightsDoNotFit(
                f"The weights in {self._loading} do not fit this model ({len(misfits)} tensors): "
                f"{listed}. --eval-only and --resume load weights exactly, so that no number comes "
                "from a randomly initialised layer; check the config (NUM_CLASSES, MODEL.FPN.*, "
                "MODEL.ROI_*_HEAD.*) or pass the checkpoint this config trained"
            )
        if original_keys and len(report.fresh) > len(model_keys) / 2:
            shapes = "; ".join(f"{k}: {tuple(c)} in the checkpoint, {tuple(m)} in the model"
                               for k, c, m in incompatible.incorrect_shapes[:5])
            raise ConfigNotRunnable(
                f"The weights in {self._loading} do not fit this model: {len(report.fresh)} of "
                f"{len(model_keys)} model tensors found nothing to load "
                f"(e.g. {', '.join(report.fresh[:5])})"
                + (f"; shape mismatches: {shapes}" if shapes else "")
                + f"; {len(report.unused)} checkpoint tensors went unused. They were made for "
                "another architecture: check MODEL.RESNETS.DEPTH, MODEL.FPN.* and the config file, "
                "or pass weights made for this model"
            )
        return incompatible


def file_sha256(path: str) -> str:
    """The hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def source_classes_from_cfg(cfg) -> List[str]:
    """The checkpoint's class names: HEAD_TRANSFER.SOURCE_CLASSES, else SOURCE_DATASET's."""
    if cfg.MODEL.HEAD_TRANSFER.SOURCE_CLASSES:
        return list(cfg.MODEL.HEAD_TRANSFER.SOURCE_CLASSES)
    return list(MetadataCatalog.get(cfg.MODEL.HEAD_TRANSFER.SOURCE_DATASET).thing_classes)


def target_classes_from_cfg(cfg) -> List[str]:
    """The model's class names, from the first training (else test) dataset."""
    for names in (cfg.DATASETS.TRAIN, cfg.DATASETS.TEST):
        if names:
            classes = MetadataCatalog.get(names[0]).get("thing_classes")
            if classes:
                return list(classes)
    return [str(i) for i in range(cfg.MODEL.ROI_HEADS.NUM_CLASSES)]


def build_checkpointer(cfg, model, save_dir="", **checkpointables) -> CityscapesFTCheckpointer:
    """A CityscapesFTCheckpointer with cfg's class map; keyword arguments go to the checkpointer."""
    class_map = list(cfg.MODEL.HEAD_TRANSFER.CLASS_MAP)
    return CityscapesFTCheckpointer(
        model,
        save_dir,
        class_map=class_map,
        source_classes=source_classes_from_cfg(cfg) if class_map else (),
        target_classes=target_classes_from_cfg(cfg) if class_map else (),
        **checkpointables,
    )
