"""A resumable store of finished evaluations, persisted as JSON.

Long scans (`sensitivity`) record every finished evaluation under a key that
names what was evaluated (`"<model fingerprint>|<tag>|<item>"`), so a scan that
is interrupted — or rerun on another engine — only evaluates what is missing.
Only the driver process writes the file, as results arrive (at most once per
`interval` seconds, and always when the scan ends or is interrupted); each write
is atomic (`kerasprune.io.write_text`) and merges what another scan wrote to the
same file in the meantime.
"""

from __future__ import annotations

import json
import logging
import os
import time

from kerasprune.errors import PruningError
from kerasprune.io import write_text

log = logging.getLogger(__name__)

CACHE_VERSION = 1


class EvaluationCache:
    """Finished evaluations (`item -> float`) of one model and tag, optionally kept in a JSON file.

    Args:
        path: JSON file, read at construction if it exists; None keeps results in memory only.
        fingerprint: Identifies the model (`kerasprune.io.model_fingerprint`).
        tag: Identifies the evaluation (e.g. `"l1|accuracy"`: criterion and metric).
        interval: Least number of seconds between two writes of the file.

    Raises:
        PruningError: the file exists but is not a readable cache.
    """

    def __init__(self, path: str | os.PathLike | None, fingerprint: str, tag: str, *, interval: float = 1.0):
        self.path = None if path is None else os.fspath(path)
        self.fingerprint = fingerprint
        self.prefix = f"{fingerprint}|{tag}|"
        self.interval = interval
        self._dirty = False
        self._written = 0.0
        self.data: dict[str, float] = self._read() if self.path else {}

    def _read(self) -> dict[str, float]:
        if not os.path.exists(self.path):
            return {}
        try:
            with open(self.path, encoding="utf-8") as f:
                content = json.load(f)
            return {str(k): float(v) for k, v in content.get("results", {}).items()}
        except (OSError, ValueError, AttributeError, TypeError) as e:
            raise PruningError(f"Sensitivity cache '{self.path}' is not a readable JSON cache: {e}") from e

    def __contains__(self, key: str) -> bool:
        return self.prefix + key in self.data

    def __getitem__(self, key: str) -> float:
        return self.data[self.prefix + key]

    def put(self, key: str, value: float) -> None:
        """Record one result; the file is rewritten if `interval` seconds have passed."""
        self.data[self.prefix + key] = value
        self._dirty = True
        if self.path and time.monotonic() - self._written >= self.interval:
            self.flush()

    def flush(self) -> None:
        """Write pending results now (merged with entries another process added to the file)."""
        if not (self.path and self._dirty):
            return
        try:
            merged = {**self._read(), **self.data}
        except PruningError:
            log.warning("cache %s became unreadable; rewriting it with this scan's results", self.path)
            merged = dict(self.data)
        self.data = merged
        payload = {"version": CACHE_VERSION, "results": merged}
        write_text(json.dumps(payload, indent=1, sort_keys=True), self.path, overwrite=True)
        self._dirty = False
        self._written = time.monotonic()
