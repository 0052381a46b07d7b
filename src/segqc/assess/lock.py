"""One ``segqc predict`` run at a time per output folder: an exclusive lock file in the folder.

Two runs writing one folder would each rewrite ``quality.csv`` from what they knew when they started
and lose the other's rows, and each would delete the other's half-written files as leftovers of a
killed run. So a run takes an exclusive, non-blocking ``flock`` on ``OUT/.segqc-predict.lock`` for its
whole length, and a second run is refused at once (``OutputInUseError``) rather than made to wait:
a second run into a busy folder is most often the same job started twice, waiting would leave it
hanging without a word for as long as the first takes, and the refused run loses nothing (run it
again later: the images already done are skipped). The kernel drops the lock when the process ends,
however it ends, so a killed run never leaves the folder locked.

The lock is re-entrant within one thread (the command takes it before loading the model, and
:func:`~segqc.assess.assess_files` takes it again); another thread of the same process is refused
like another process.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from segqc.errors import SegQCError

try:  # POSIX; elsewhere only the in-process lock applies
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".segqc-predict.lock"

__all__ = ["LOCK_FILE", "OutputInUseError", "output_lock"]


class OutputInUseError(SegQCError):
    """Another ``segqc predict`` run holds the output folder."""


_guard = threading.Lock()
#: resolved folder -> [owning thread id, depth, file descriptor]
_held: dict[Path, list[int]] = {}


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


def _in_use(out: Path, pid: str) -> OutputInUseError:
    return OutputInUseError(f"{out} is in use by another segqc predict run (pid {pid})")


def _acquire(out: Path) -> int:
    path = out / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise SegQCError(f"{out}: cannot write there ({err.strerror or err})") from None
    if fcntl is None:  # pragma: no cover
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _holder(fd)
        os.close(fd)
        raise _in_use(out, pid) from None
    except OSError as err:  # e.g. a file system without locks: refuse rather than run unguarded
        os.close(fd)
        raise SegQCError(f"{path}: cannot lock ({err.strerror or err})") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # the pid is only for the message of a refused run
    return fd


def _release(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)  # while still held: a later holder's pid is never erased
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextlib.contextmanager
def output_lock(out: str | Path) -> Iterator[Path]:
    """Hold ``out`` (an existing folder) exclusively for the ``with`` block; yields ``out``.

    Raises:
        OutputInUseError: another run (another process, or another thread here) holds it.
        SegQCError: the lock file cannot be created or locked.
    """
    out = Path(out)
    key = out.resolve()
    me = threading.get_ident()
    with _guard:
        entry = _held.get(key)
        if entry is not None and entry[0] != me:
            raise _in_use(out, str(os.getpid()))
        if entry is not None:
            entry[1] += 1
        else:
            _held[key] = [me, 1, _acquire(out)]
    try:
        yield out
    finally:
        with _guard:
            entry = _held[key]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                _release(entry[2])
