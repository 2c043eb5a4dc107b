"""Last known good: the SDK's applied snapshot on disk, written atomically.

``write_backup`` writes a temporary file in the target's directory, flushes and
fsyncs it, then renames it over the target: a reader (another process, or this
one after a crash) sees the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from flags.model import Snapshot

__all__ = ["read_backup", "write_backup"]


def write_backup(path: str | Path, snapshot: Snapshot) -> None:
    """Atomically replace ``path`` with ``snapshot`` as the JSON of ``/sdk/v1/snapshot``.

    Raises ``OSError`` when the directory is not writable (the old file is kept).
    """
    target = Path(path)
    data = json.dumps(snapshot.to_dict(), separators=(",", ":")).encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_backup(path: str | Path) -> Snapshot:
    """The snapshot stored at ``path``.

    Raises ``OSError`` (``FileNotFoundError`` when there is none), or
    ``flags.errors.ValidationError`` / ``ValueError`` when its content is not a snapshot.
    """
    with open(path, encoding="utf-8") as fh:
        return Snapshot.from_dict(json.load(fh))
