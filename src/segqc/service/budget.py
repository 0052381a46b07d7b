"""A bound on the decoded pixels in flight across concurrent requests (one budget per server process).

Each request holds the pixels its image declares (read from the header, before decoding) from just
before decoding until its answer is built. A request whose image does not fit in what is free waits,
first come first served, at most ``wait_s`` seconds, then gets 503 with ``Retry-After``; an image
larger than the whole budget gets 413 at once. Without this bound, memory grows with the number of
concurrent large images: each costs about :data:`BYTES_PER_PIXEL` bytes per pixel while it is
processed (decoded RGB, Pillow's copy, full-size float32 probability and uncertainty maps, the mask,
the PNG encodings).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import HTTPException

#: Peak memory per decoded pixel in flight, measured. One request alone: a 6000x6000 PNG through
#: ``Assessor.run`` (decode, assess, mask and heat-map PNGs) raised the peak RSS by 18.5-20 bytes per
#: pixel. Under load (``benchmarks/bench_service_load.py``: 25 M pixel images among small ones, 16
#: clients) the peak RSS rose by 19.5 bytes per pixel of the budget's peak in use with
#: :func:`return_freed_memory` (as ``segqc serve`` runs), and by 29-47 without it (glibc kept freed
#: memory). 40 covers both: ``create_app`` served by other means does not change the allocator.
BYTES_PER_PIXEL = 40
#: Default budget: 80 M pixels, about 3 GB at :data:`BYTES_PER_PIXEL` on top of the process's ~0.4 GB.
#: Two images at the default per-image limit (40 M pixels), or two of the largest ISIC 2017 images
#: (30 M) plus smaller ones, fit at once. On a 24 GiB machine that leaves most memory to the OS and
#: other work, and ``--workers 4`` (four budgets, about 14 GB) still fits.
DEFAULT_PIXEL_BUDGET = 80_000_000
#: Default longest wait for the budget before 503.
DEFAULT_QUEUE_TIMEOUT_S = 15.0


class PixelBudget:
    """Up to ``total`` decoded pixels in flight; waiters are served in arrival order.

    Used from one event loop only (the server's), so it needs no lock.
    """

    def __init__(self, total: int, wait_s: float = DEFAULT_QUEUE_TIMEOUT_S) -> None:
        if total < 1 or not wait_s >= 0:
            raise ValueError(f"pixel budget must be positive and wait >= 0, got {total} and {wait_s}")
        self.total = total
        self.wait_s = wait_s
        self.free = total
        self.peak = 0  # most pixels in use at once so far
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def in_use(self) -> int:
        return self.total - self.free

    @property
    def retry_after(self) -> str:
        """Seconds a refused client should wait: the queue timeout, at least 1."""
        return str(max(1, math.ceil(self.wait_s)))

    @asynccontextmanager
    async def hold(self, pixels: int, name: str) -> AsyncIterator[None]:
        """Hold ``pixels`` of the budget for the ``async with`` block; 413 or 503 as described above."""
        if pixels > self.total:
            raise HTTPException(
                413,
                f"{name}: image of {pixels} pixels is larger than this server's decoding budget of "
                f"{self.total} pixels",
            )
        await self._acquire(pixels, name)
        try:
            yield
        finally:
            self._release(pixels)

    async def _acquire(self, pixels: int, name: str) -> None:
        if not self._waiters and pixels <= self.free:
            self._take(pixels)
            return
        entry = (pixels, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(entry[1], self.wait_s)
        except BaseException as err:  # timeout, or the request was cancelled (client gone)
            if entry[1].done() and not entry[1].cancelled():
                self._release(pixels)  # granted just as the wait ended: give it back
            else:
                with contextlib.suppress(ValueError):  # (already dropped by _grant)
                    self._waiters.remove(entry)
                self._grant()  # the next in line may fit now
            if isinstance(err, (asyncio.TimeoutError, TimeoutError)):
                raise HTTPException(
                    503,
                    f"{name}: the server is busy decoding other images ({self.in_use} of {self.total} "
                    f"pixels in use; this image needs {pixels}); retry in {self.retry_after} s",
                    headers={"Retry-After": self.retry_after},
                ) from None
            raise

    def _release(self, pixels: int) -> None:
        self.free += pixels
        self._grant()

    def _grant(self) -> None:
        while self._waiters:
            pixels, future = self._waiters[0]
            if future.done():  # cancelled: being removed by its owner
                self._waiters.popleft()
                continue
            if pixels > self.free:
                return  # first come, first served: a large image is not starved by small ones
            self._waiters.popleft()
            self._take(pixels)
            future.set_result(None)

    def _take(self, pixels: int) -> None:
        self.free -= pixels
        self.peak = max(self.peak, self.total - self.free)


def return_freed_memory() -> bool:
    """Make this process hand large freed buffers back to the OS at once (glibc only; else a no-op).

    glibc raises its mmap threshold after each large free (up to 32 MiB), so later buffers of a few
    MiB (Pillow's 16 MiB image blocks, row buffers) come from per-thread heaps that keep their pages
    after ``free``: the peak RSS then grows with the threads that ever held a large image, not with
    the pixels in flight that the budget bounds. A fixed 1 MiB threshold serves every larger buffer
    with its own ``mmap``, returned on ``free``; at most 4 heaps limit what the rest can hold on to.
    Called by ``segqc serve`` for its own process; returns whether the settings were applied.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold, m_arena_max = -3, -8
    return bool(mallopt(m_mmap_threshold, 1024 * 1024)) and bool(mallopt(m_arena_max, 4))
