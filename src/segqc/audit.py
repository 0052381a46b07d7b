"""An append-only audit log: one JSON line per decision, for ``serve`` and ``predict``.

Each record names the input by its SHA-256 and the model by its manifest digest, so a decision can
be traced to the exact bytes and the exact model that made it. Lines are appended with ``O_APPEND``
under an exclusive ``flock``, one ``write`` per line, so concurrent writers (server workers, parallel
``predict`` runs) never interleave or lose lines; existing lines are never rewritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

try:  # POSIX; elsewhere the in-process lock alone serialises writers
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

#: The fields of a decision record, in order (``time`` is added by :meth:`AuditLog.record`).
FIELDS = (
    "time", "request_id", "source", "input_sha256", "image_size", "model_sha256",
    "predicted_jaccard", "jaccard_lower", "decision", "reason", "latency_ms",
)  # fmt: skip


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` (hex): the input's fingerprint in the log."""
    return hashlib.sha256(data).hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON
    if hasattr(value, "item"):  # NumPy scalars
        return _plain(value.item())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class AuditLog:
    """Append decision records to a JSON-lines file (created with its folder if needed).

    Raises:
        OSError: the file cannot be opened for appending (at construction, so a server or a batch run
            fails before it decides anything rather than deciding without a log).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Open once now: a log that cannot be written is an error at start, not a silent gap later.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.close(fd)

    def record(self, **fields: Any) -> dict[str, Any]:
        """Append one record (``time`` added, UTC ISO 8601); returns it."""
        entry = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
        entry.update({k: _plain(v) for k, v in fields.items()})
        line = (json.dumps(entry, allow_nan=False, default=str) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                view = memoryview(line)
                while view:  # one write almost always; loop on a short write
                    written = os.write(fd, view)
                    view = view[written:]
            finally:
                if fcntl is not None:
                    with contextlib.suppress(OSError):
                        fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        return entry
