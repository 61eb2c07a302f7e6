"""The checkpointer's file access with atomic writes."""
from ..utils import atomic_open


class AtomicWritePathManager:
    """Wraps an iopath PathManager: local files opened for writing ("w"/"wb") are written
    atomically; everything else goes to the wrapped manager. fvcore's Checkpointer writes both the
    checkpoint and `last_checkpoint` through `path_manager.open`, so a kill at any moment leaves the
    previous checkpoint and a `last_checkpoint` that names a complete file."""

    def __init__(self, path_manager):
        self._pm = path_manager

    def __getattr__(self, name):
        return getattr(self._pm, name)

    def open(self, path, mode="r", **kwargs):
        """Local files opened for writing are atomic_open files; the rest is the wrapped manager's."""
        if mode in ("w", "wb") and "://" not in str(path):
            return atomic_open(path, mode)
        return self._pm.open(path, mode, **kwargs)
