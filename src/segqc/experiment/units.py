"""A generic cache of units of work, for resumable runs.

A :class:`Unit` is one cacheable piece of work: its ``key`` holds everything its result depends on
(settings, data hashes, the hashes of the units it reads), and its folder is named by its label and
a hash of the key. :class:`UnitStore` keeps finished units on disk: each unit's files are written
atomically and its ``unit.json`` (the full key) last, so a killed run leaves either a finished unit
or none (the trainings of an unfinished one then resume from their last epoch: :mod:`segqc.checkpoint`);
a unit is loaded only when its stored key equals the wanted one (never silently reused with other
settings), and a damaged one is recomputed. :class:`UnitRunner` gets units: from memory,
from the store, or by computing them (:func:`run_unit`), and counts and logs what it did.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from segqc import __version__
from segqc.checkpoint import PARTIAL, resume_in
from segqc.engine import check_time_budget, is_main_process
from segqc.utils import atomic_write, canonical, write_json


@dataclass
class Payload:
    """What a unit produces: arrays (saved as .npz), tensors (safetensors) and JSON-able meta."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    tensors: dict[str, Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Unit:
    """One cacheable piece of work. ``key`` holds everything its result depends on."""

    kind: str
    label: str
    key: dict[str, Any]
    compute: Callable[[], Payload] = field(repr=False, compare=False)

    @property
    def digest(self) -> str:
        return hash_key({"kind": self.kind, "key": self.key})

    @property
    def folder(self) -> str:
        return f"{self.label}-{self.digest}"


def run_unit(unit: Unit, scratch: Path | None = None) -> tuple[Payload, float]:
    """Compute one unit: the only place where a unit's work is done. With ``scratch``, its trainings
    save their progress there after every epoch, and a rerun resumes them (:mod:`segqc.checkpoint`).

    Returns the payload and the seconds its resumed trainings had run before this call (0 if none).
    """
    with resume_in(scratch, key={"kind": unit.kind, "digest": unit.digest}) as block:
        payload = unit.compute()
    return payload, 0.0 if block is None else block.carried_seconds


def hash_key(obj: Any) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()[:16]


class UnitStore:
    """Finished units under ``root``: one folder each, ``unit.json`` written last."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _finished(self, unit: Unit) -> dict[str, Any] | None:
        """The stored ``unit.json`` of a finished unit of this very key, else None."""
        try:
            info = json.loads((self.root / unit.folder / "unit.json").read_text())
            return info if info.get("key") == json.loads(canonical(unit.key)) else None
        except Exception:  # absent, unfinished or damaged: not finished
            return None

    def has(self, unit: Unit) -> bool:
        """Whether a finished unit of this key is stored (its files are checked only when loaded)."""
        return self._finished(unit) is not None

    def load(self, unit: Unit) -> tuple[Payload, float] | None:
        """The cached payload and its compute time, or None if absent, unfinished or of another key."""
        folder = self.root / unit.folder
        info = self._finished(unit)
        if info is None:
            return None
        try:
            payload = Payload(meta=info.get("meta", {}))
            if info.get("has_arrays"):
                with np.load(folder / "arrays.npz", allow_pickle=False) as z:
                    payload.arrays = {k: z[k] for k in z.files}
            if info.get("has_tensors"):
                from safetensors.torch import load_file

                payload.tensors = load_file(str(folder / "weights.safetensors"))
            return payload, float(info.get("seconds", 0.0))
        except Exception:  # absent, unfinished or damaged: recomputed, never trusted
            return None

    def scratch(self, unit: Unit) -> Path:
        """Where an unfinished unit keeps its trainings' progress; removed once the unit is saved."""
        return self.root / PARTIAL / unit.folder

    def save(self, unit: Unit, payload: Payload, seconds: float) -> None:
        if not is_main_process():  # under torchrun, rank 0 writes; every rank computes the same units
            return
        folder = self.root / unit.folder
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder / "unit.json")  # the old marker must not vouch for new, half-written files
        if payload.arrays:
            with atomic_write(folder / "arrays.npz") as fh:
                np.savez_compressed(fh, **payload.arrays)
        if payload.tensors:
            from safetensors.torch import save

            with atomic_write(folder / "weights.safetensors") as fh:
                fh.write(save({k: v.contiguous() for k, v in payload.tensors.items()}))
        write_json(
            folder / "unit.json",
            {
                "kind": unit.kind,
                "label": unit.label,
                "digest": unit.digest,
                "key": unit.key,
                "meta": payload.meta,
                "seconds": seconds,
                "has_arrays": bool(payload.arrays),
                "has_tensors": bool(payload.tensors),
                "segqc": __version__,
            },
        )
        self.drop_scratch(unit)

    def drop_scratch(self, unit: Unit) -> None:
        """Remove a stored unit's progress (kept by this run, or by another that computed it too)."""
        if not is_main_process():
            return
        shutil.rmtree(self.scratch(unit), ignore_errors=True)
        with contextlib.suppress(OSError):  # gone once no unit is unfinished
            (self.root / PARTIAL).rmdir()


class UnitRunner:
    """Gets units from memory, the store under ``root`` or by computing them; counts and logs them."""

    def __init__(self, root: Path, *, progress: bool = True) -> None:
        self.store = UnitStore(root)
        self.progress = progress
        self.memo: dict[str, Payload] = {}
        self.start = time.perf_counter()
        self.done = 0
        self.total = 0  # units planned, for the log lines
        self.computed = 0
        self.compute_seconds = 0.0
        self.seconds_by_kind: dict[str, list[float]] = {}  # of the units computed by this run
        self.pending: dict[str, str] = {}  # digest -> kind of the planned units not yet stored

    def expect(self, units: list[Unit]) -> None:
        """The units this run will get, in order: counted, and those not stored kept for the estimate."""
        self.total = len(units)
        self.pending = {u.digest: u.kind for u in units if not self.store.has(u)}
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(Counter(self.pending.values()).items()))
        self.log(f"{len(self.pending)} of {self.total} units to compute ({counts or 'none'})")

    def estimate(self) -> str:
        """Time left for the pending units, from the mean time of each kind computed so far."""
        means = {k: sum(v) / len(v) for k, v in self.seconds_by_kind.items()}
        known = [means[k] for k in self.pending.values() if k in means]
        if not self.pending:
            return ""
        unknown = len(self.pending) - len(known)
        more = f" + {unknown} of kinds not yet timed" if unknown else ""
        return f"; about {sum(known):.0f} s left for {len(self.pending)} units{more}"

    def log(self, message: str) -> None:
        if self.progress:
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stderr)

    def get(self, unit: Unit) -> Payload:
        if unit.digest in self.memo:
            return self.memo[unit.digest]
        cached = self.store.load(unit)
        if cached is not None:
            payload, seconds = cached
            status = f"cached ({seconds:.1f} s when computed)"
            self.store.drop_scratch(unit)  # left by a run that trained it while another stored it
        else:
            check_time_budget()
            t0 = time.perf_counter()
            payload, carried = run_unit(unit, self.store.scratch(unit))
            seconds = time.perf_counter() - t0 + carried  # the whole work's, across stopped runs
            self.store.save(unit, payload, seconds)
            self.computed += 1
            self.seconds_by_kind.setdefault(unit.kind, []).append(seconds)
            self.pending.pop(unit.digest, None)
            earlier = f", {carried:.0f} s of it in earlier runs" if carried else ""
            status = f"computed in {seconds:.1f} s{earlier}{self.estimate()}"
        self.compute_seconds += seconds
        self.memo[unit.digest] = payload
        self.done += 1
        self.log(
            f"[{self.done}/{self.total}] {unit.label}: {status}; "
            f"{time.perf_counter() - self.start:.0f} s elapsed"
        )
        return payload
