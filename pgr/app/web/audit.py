"""The audit log: one JSON line per search, export, frame view, erasure and login, appended, never rewritten.

Each line says who, when, what (the query: an upload's SHA-256 and size, never the image; detection ids),
with which filters, and how many results. The file is opened in append mode for every entry (O_APPEND: a
line is never interleaved with another writer's) and flushed to disk before the response leaves.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any


class AuditLog:
    """Appends entries to a JSON-lines file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def append(self, user: str, action: str, **fields: Any) -> dict[str, Any]:
        """Write one entry (time, user, action and `fields`) and return it."""
        entry = {"time": time.time(), "user": user, "action": action, **fields}
        line = json.dumps(entry, sort_keys=True, default=str) + "\n"
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        return entry

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, oldest first."""
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
