"""metrics.json written so that a kill never leaves half a record, and a resumed run continues it."""
import json
import os

from detectron2.utils.events import JSONWriter

from ..errors import OutputNotWritable
from ..utils import atomic_open, read_metrics


class _LineBuffer:
    """What JSONWriter.write writes into (it needs write and flush; no fileno, so no fsync)."""

    def __init__(self):
        self.lines = []

    def write(self, text):
        self.lines.append(text)

    def flush(self):
        pass


class AtomicJSONWriter(JSONWriter):
    """detectron2's JSONWriter (one JSON record per line in metrics.json), safe against kills and
    resumes: its first write replaces the file (through a temporary file and a rename) with the
    complete records older than the iterations it writes, so records a resumed run repeats (those
    after its checkpoint) are replaced, not duplicated, and a line torn by a kill is dropped; later
    writes append whole lines in one write each, so the file stays cheap to write every
    iteration."""

    def __init__(self, json_file, window_size=20):
        super().__init__(os.devnull, window_size)
        super().close()
        self._path = json_file
        self._old_records = read_metrics(json_file)
        self._file_handle = _LineBuffer()

    def write(self):
        """Appends this iteration's scalars to metrics.json, replacing records a resumed run repeats."""
        try:
            self._write()
        except OSError as e:
            raise OutputNotWritable(
                f"Could not write {self._path} ({e.strerror or e}); the records written so far are "
                "whole. Free space or fix the folder's permissions, then run again with --resume"
            ) from e

    def _write(self):
        super().write()
        new = [json.loads(line) for line in self._file_handle.lines]
        self._file_handle.lines.clear()
        if not new:
            return
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in new)
        if self._old_records is None:
            with open(self._path, "a") as f:
                f.write(text)
            return
        first = min(r["iteration"] for r in new)
        kept = [r for r in self._old_records if r.get("iteration", -1) < first]
        with atomic_open(self._path, "w") as f:
            f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept) + text)
        self._old_records = None

    def close(self):
        """Nothing to flush: every write is complete on disk."""
        pass
