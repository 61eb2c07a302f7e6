"""The one way weights get into a model: `load_weights`, exact or lenient, used by the training
start, --resume, --eval-only, submission, export, analysis and the demo (`load_model`)."""
import os
import urllib.error

from detectron2.modeling import build_model

from ..errors import WeightsNotAvailable
from .checkpointer import build_checkpointer


def load_weights(checkpointer, weights: str, *, strict: bool, checkpointables=None, sha256: str = "") -> dict:
    """Load `weights` (a .pth or model-zoo .pkl file, a detectron2:// or http(s) URL) into the
    checkpointer's model and return the rest of the checkpoint (iteration, ...).

    strict=True where numbers are published or a run continues (--eval-only, --resume,
    submission, export, demo): a tensor missing, left over or of another shape is refused, listing
    them, and no weights at all ("") is refused too. strict=False for a fine-tuning start: head
    transfer by class map, fresh layers where the checkpoint has none, a load report; "" starts
    from the model as initialised. checkpointables: None loads every checkpointable the
    checkpoint holds (a resume); [] the model only. sha256: the digest (or prefix) the file must
    have (MODEL.WEIGHTS_SHA256), checked before it is unpickled; the digest of every file loaded
    is logged and kept in `checkpointer.last_sha256`. A file or download that cannot be had is
    one WeightsNotAvailable with the fix."""
    if not weights:
        if strict:
            raise WeightsNotAvailable(
                "MODEL.WEIGHTS is empty: pass the trained checkpoint, e.g. MODEL.WEIGHTS "
                "output/cs_ft/model_final.pth"
            )
        return {}
    checkpointer.strict = strict
    checkpointer.expected_sha256 = sha256
    try:
        return checkpointer.load(weights, checkpointables=checkpointables)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        name = os.path.basename(weights)
        raise WeightsNotAvailable(
            f"Could not download MODEL.WEIGHTS '{weights}' ({e}). Without network access, "
            f"download {name} on a machine that has it and pass the local file: "
            f"MODEL.WEIGHTS /path/to/{name} (or MODEL.WEIGHTS \"\" to start from scratch)"
        ) from e
    except (FileNotFoundError, AssertionError) as e:
        if "://" not in weights and not os.path.exists(weights):
            raise WeightsNotAvailable(
                f"MODEL.WEIGHTS '{weights}' does not exist. Pass a model-zoo .pkl or a .pth "
                "checkpoint, a detectron2:// URL, or MODEL.WEIGHTS \"\" to start from scratch"
            ) from e
        raise


def load_model(cfg, weights=None, *, strict: bool = True):
    """cfg's model in eval mode with `weights` (default cfg.MODEL.WEIGHTS) loaded by
    `load_weights` with cfg's class map (and cfg.MODEL.WEIGHTS_SHA256 when they are MODEL.WEIGHTS)."""
    model = build_model(cfg)
    weights = cfg.MODEL.WEIGHTS if weights is None else weights
    load_weights(build_checkpointer(cfg, model), weights, strict=strict, checkpointables=[],
                 sha256=cfg.MODEL.WEIGHTS_SHA256 if weights == cfg.MODEL.WEIGHTS else "")
    return model.eval()
