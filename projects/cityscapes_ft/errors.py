"""Errors that carry one clear message for the user: the command line prints it, not a traceback."""
import contextlib
import sys


class CityscapesFTError(Exception):
    """Base class: something the user can fix (a path, a key, a missing download)."""


class CityscapesDataError(CityscapesFTError, RuntimeError):
    """A Cityscapes-format dataset is missing, empty or malformed; the message names the path."""


class ConfigNotRunnable(CityscapesFTError, ValueError):
    """A config this installation or machine cannot run."""


class WeightsNotAvailable(CityscapesFTError, RuntimeError):
    """MODEL.WEIGHTS cannot be read or downloaded."""


class CheckpointUnreadable(CityscapesFTError, RuntimeError):
    """A checkpoint or MODEL.WEIGHTS file is truncated, empty or not a checkpoint."""


class WeightsDigestMismatch(CityscapesFTError, RuntimeError):
    """A weights file whose SHA-256 is not the one MODEL.WEIGHTS_SHA256 pins."""


class WeightsDoNotFit(CityscapesFTError, RuntimeError):
    """Weights loaded strictly (--eval-only, --resume) miss, add or mis-shape tensors."""


class ExportNotSupported(CityscapesFTError, RuntimeError):
    """A config, or a format, that tools/export_model.py cannot export; the message says why."""


class OutputNotWritable(CityscapesFTError, OSError):
    """A checkpoint, metrics or result file could not be written (disk full, read-only, ...)."""


class OutputDirInUse(CityscapesFTError, RuntimeError):
    """Another run holds OUTPUT_DIR."""


class CityscapesEvaluationError(CityscapesFTError, RuntimeError):
    """The evaluation cannot be run on this dataset or these predictions."""


class TrainingDiverged(CityscapesFTError, FloatingPointError):
    """The loss became NaN or infinite."""


EXIT_USER_ERROR = 2


@contextlib.contextmanager
def user_errors_as_messages():
    """Turn our errors (and a failed worker process, which printed its own) into one line and exit
    status 2."""
    from torch.multiprocessing import ProcessExitedException

    try:
        yield
    except CityscapesFTError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except ProcessExitedException as e:
        if e.exit_code == EXIT_USER_ERROR:
            sys.exit(EXIT_USER_ERROR)
        raise
