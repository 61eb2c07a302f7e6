"""What a run owns in its OUTPUT_DIR: one run at a time, and no half-written leftovers."""
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import time

from ..errors import OutputDirInUse
from ..utils import ATOMIC_TMP_PATTERN

logger = logging.getLogger(__name__)
LOCK_FILE = ".cityscapes_ft_run.lock"
# replace_directory's names for the folder being written and the one being replaced.
STAGING_SUFFIX, REPLACED_SUFFIX = ".partial", ".replaced"


class RunDirectory:
    """Holds OUTPUT_DIR for one run of this process (main process only).

    claim(): takes an exclusive lock (a second run into the folder is refused, naming the
    holder's process and host; the kernel drops the lock of a dead process, whose leftover record
    is taken over with a warning), then removes what killed runs left half-written."""

    def __init__(self, output_dir: str):
        self.output_dir = os.path.abspath(output_dir)
        self._lock = None

    @property
    def lock_path(self):
        """OUTPUT_DIR/.cityscapes_ft_run.lock, which holds the holder's pid, host and command."""
        return os.path.join(self.output_dir, LOCK_FILE)

    def claim(self):
        """Lock OUTPUT_DIR for this run and remove what interrupted runs left; returns self."""
        os.makedirs(self.output_dir, exist_ok=True)
        lock = open(self.lock_path, "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(lock)
            lock.close()
            raise OutputDirInUse(
                f"OUTPUT_DIR {self.output_dir} is in use by process {holder.get('pid', '?')} on host "
                f"{holder.get('host', '?')} (started {holder.get('started', '?')}: "
                f"{holder.get('command', '?')}). Wait for it or stop it, or pass another OUTPUT_DIR"
            ) from None
        previous = _read_holder(lock)
        if previous:
            logger.warning(
                f"Taking over OUTPUT_DIR {self.output_dir} from process {previous.get('pid')} on host "
                f"{previous.get('host')}, which ended without releasing it (killed?)"
            )
        lock.seek(0)
        lock.truncate()
        json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                   "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}, lock)
        lock.flush()
        self._lock = lock
        self._remove_leftovers()
        return self

    def _remove_leftovers(self):
        """Temporary files of atomic writes and half-replaced folders that a kill left behind."""
        for folder, dirs, files in os.walk(self.output_dir):
            for name in files:
                if ATOMIC_TMP_PATTERN.match(name):
                    os.unlink(os.path.join(folder, name))
                    logger.info(f"Removed {os.path.join(folder, name)}, left by an interrupted write")
            for name in list(dirs):
                path = os.path.join(folder, name)
                if name.endswith(STAGING_SUFFIX):
                    shutil.rmtree(path, ignore_errors=True)
                    dirs.remove(name)
                elif name.endswith(REPLACED_SUFFIX):
                    final = path[: -len(REPLACED_SUFFIX)]
                    if os.path.exists(final):
                        shutil.rmtree(path, ignore_errors=True)
                    else:  # killed between the two renames: the old folder is still the whole one
                        os.rename(path, final)
                    dirs.remove(name)

    def release(self):
        """Clear the holder record and drop the lock."""
        if self._lock is not None:
            self._lock.seek(0)
            self._lock.truncate()
            self._lock.close()  # closing drops the flock
            self._lock = None


def _read_holder(lock) -> dict:
    lock.seek(0)
    try:
        return json.loads(lock.read() or "{}")
    except ValueError:
        return {}


def replace_directory(staging: str, final: str):
    """Put a fully written `staging` folder in the place of `final`, the old one out of the way
    first: a kill at any moment leaves either the old or the new folder whole (RunDirectory.claim
    finishes or undoes a replacement that a kill interrupted)."""
    replaced = final + REPLACED_SUFFIX
    if os.path.exists(final):
        shutil.rmtree(replaced, ignore_errors=True)
        os.rename(final, replaced)
    os.rename(staging, final)
    shutil.rmtree(replaced, ignore_errors=True)


def staging_directory(final: str) -> str:
    """An empty folder to write what will replace `final`."""
    staging = final + STAGING_SUFFIX
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    return staging


# The RunDirectory this process holds, per OUTPUT_DIR (main process only).
_held = {}


def hold_output_dir(output_dir: str) -> RunDirectory:
    """Claim OUTPUT_DIR for this process's run (the same RunDirectory if it holds it already)."""
    key = os.path.abspath(output_dir)
    if key not in _held:
        _held[key] = RunDirectory(output_dir).claim()
    return _held[key]


def release_output_dir(output_dir: str):
    """Release OUTPUT_DIR if this process holds it."""
    held = _held.pop(os.path.abspath(output_dir), None)
    if held is not None:
        held.release()
