"""Small helpers shared across the package."""
import json
import math
import os
import re
import tempfile


def json_safe(value):
    """`value` with NaN/inf as None and numpy scalars as Python numbers, for json.dump."""
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null means "not defined" (e.g. a class without ground truth)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return json_safe(value.item())
    return value


def _current_umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, for a moment, for every thread)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Temporary files of atomic_open: ".<name>.<8 random characters>.tmp" beside the file.
ATOMIC_TMP_PATTERN = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


class atomic_open:
    """open() for writing that never leaves half a file: the data goes to a temporary file beside
    `path`, which replaces `path` on close (and is removed if the `with` block raises). The file
    gets the mode a plain open() would give (0666 less the umask), not mkstemp's 0600."""

    def __init__(self, path, mode="w"):
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        fd, self.tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
        os.fchmod(fd, 0o666 & ~_current_umask())
        self._f = os.fdopen(fd, mode)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.discard()
        return False

    def close(self):
        """Flush, sync and move the temporary file into place."""
        if self._f.closed:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.tmp, self.path)

    def discard(self):
        """Close and delete the temporary file; the target stays as it was."""
        self._f.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def json_text(data) -> str:
    """The JSON our result files hold: indented, NaN/inf as null, numpy scalars as numbers."""
    return json.dumps(json_safe(data), indent=2)


def atomic_write_json(path: str, data) -> None:
    """Write JSON so that readers never see half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_open(path, "w") as f:
        f.write(json_text(data))


def cpus_per_local_process() -> int:
    """This machine's cores divided by the run's processes on it: the size of a process's worker
    pools (dataset parsing, evaluation), so N processes do not each start one worker per core."""
    from detectron2.utils import comm

    return max(1, (os.cpu_count() or 1) // max(1, comm.get_local_size()))


def read_metrics(path):
    """The complete records of a metrics.json (a torn last line from an old writer is dropped)."""
    records = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    break
    return records
