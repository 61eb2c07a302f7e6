"""metrics.json written so that a kill never leaves half a record, and a resumed run continues it."""
import json
from collections import defaultdict

from detectron2.utils.events import EventWriter, get_event_storage

from ..errors import OutputNotWritable
from ..utils import atomic_open, read_metrics


class AtomicJSONWriter(EventWriter):
    """metrics.json in detectron2's JSONWriter format (one JSON record per iteration and line:
    the scalars of the event storage not written yet, smoothed over `window_size` where their
    hint asks, and "iteration"), safe against kills and resumes. detectron2's JSONWriter appends
    to a handle it opens itself, so it can neither replace records nor write a line whole; here
    the first write replaces the file (through a temporary file and a rename) with the complete
    records older than the iterations it writes, so records a resumed run repeats (those after
    its checkpoint) are replaced, not duplicated, and a line torn by a kill is dropped; later
    writes append whole lines in one write each, so the file stays cheap to write every
    iteration."""

    def __init__(self, json_file, window_size=20):
        self._path = json_file
        self._window_size = window_size
        self._last_write = -1
        self._old_records = read_metrics(json_file)

    def write(self):
        """Appends the new iterations' scalars to metrics.json, replacing records a resumed run repeats."""
        storage = get_event_storage()
        new = defaultdict(dict)
        for key, (value, iteration) in storage.latest_with_smoothing_hint(self._window_size).items():
            if iteration > self._last_write:
                new[iteration][key] = value
        if not new:
            return
        self._last_write = max(new)
        records = [dict(scalars, iteration=iteration) for iteration, scalars in sorted(new.items())]
        try:
            self._write(records)
        except OSError as e:
            raise OutputNotWritable(
                f"Could not write {self._path} ({e.strerror or e}); the records written so far are "
                "whole. Free space or fix the folder's permissions, then run again with --resume"
            ) from e

    def _write(self, records):
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        if self._old_records is None:
            with open(self._path, "a") as f:
                f.write(text)
            return
        first = records[0]["iteration"]
        kept = [r for r in self._old_records if r.get("iteration", -1) < first]
        with atomic_open(self._path, "w") as f:
            f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept) + text)
        self._old_records = None

    def close(self):
        """Nothing to flush: every write is complete on disk."""
        pass
