"""Loading MODEL.WEIGHTS with one clear message when the file or the network is missing."""
import os
import urllib.error

from .errors import WeightsNotAvailable


def load_weights_or_explain(load, weights: str):
    """Run `load()` (a checkpointer call); turn a failed download or missing file into one message."""
    try:
        return load()
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        name = os.path.basename(weights)
        raise WeightsNotAvailable(
            f"Could not download MODEL.WEIGHTS '{weights}' ({e}). Without network access, "
            f"download {name} on a machine that has it and pass the local file: "
            f"MODEL.WEIGHTS /path/to/{name} (or MODEL.WEIGHTS \"\" to start from scratch)"
        ) from e
    except (FileNotFoundError, AssertionError) as e:
        if weights and "://" not in weights and not os.path.exists(weights):
            raise WeightsNotAvailable(
                f"MODEL.WEIGHTS '{weights}' does not exist. Pass a model-zoo .pkl or a .pth "
                "checkpoint, a detectron2:// URL, or MODEL.WEIGHTS \"\" to start from scratch"
            ) from e
        raise
