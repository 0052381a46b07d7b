"""Resumable trainings: the state of a training loop saved after every epoch, and picked up again.

A long run killed mid-training (a session that ends, a time budget, a crash) would otherwise lose the
whole training of the network it was on: at 64 px an f takes about 45 CPU-minutes, at 224 px hours.
Inside :func:`resume_in(folder, key) <resume_in>` every :func:`segqc.engine.train_loop` saves its
state to ``folder/train-<k>.safetensors`` (``k``: the k-th training in the block) after each epoch,
and a later run of the same work resumes from the last finished epoch, to the same weights as an
uninterrupted run (same thread count): the model, the optimiser, the learning-rate schedule, the
loop's shuffling generator, torch's global random state (dropout, HCNN's noise, LCE's hints) and
what the loss carries between steps (LCE's weight lambda) are all restored.
The seconds a training ran before it was stopped are kept too, so that a resumed unit's recorded
compute time is the whole training's (:attr:`ResumeBlock.carried_seconds`).

A checkpoint is used only when its fingerprint matches: the caller's ``key`` (what the training
depends on: for an experiment unit its digest) and the loop's own settings (epochs, batch size,
learning rate and schedule, number of samples, parameter shapes). Anything else (another key, a
damaged or foreign file) is ignored and the training starts over. Tensors go in safetensors and the
rest in its JSON metadata: nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segqc.utils import atomic_write

FORMAT = "segqc-training-checkpoint-v1"
#: The folder, inside a run's output, where unfinished work keeps its trainings' progress.
PARTIAL = ".partial"


@dataclass
class ResumeBlock:
    """One :func:`resume_in` block: where its trainings save, under which key, and what they resumed."""

    folder: Path
    key: str
    trainings: int = 0  # train_loop calls so far in this block: names their files
    #: Seconds its resumed trainings had already run in earlier, stopped runs (so that a resumed
    #: unit's recorded compute time is the whole training's, not only the part after the resume).
    carried_seconds: float = 0.0


_block: ResumeBlock | None = None


@contextlib.contextmanager
def resume_in(folder: str | Path | None, key: Any = None) -> Iterator[ResumeBlock | None]:
    """Make the trainings inside this block resumable from ``folder`` (None: not resumable).

    ``key`` (JSON-able) is what the trainings depend on beyond the loop's own settings (data, seed,
    method); a checkpoint saved under another key is never resumed. Yields the block (None when
    ``folder`` is None), whose ``carried_seconds`` says how much earlier runs had trained.
    """
    global _block
    previous = _block
    # None switches resuming off inside an outer block too, rather than sharing its files and key
    _block = (
        None if folder is None else ResumeBlock(Path(folder), json.dumps(key, sort_keys=True, default=str))
    )
    try:
        yield _block
    finally:
        _block = previous


def next_checkpoint(settings: dict[str, Any], model: nn.Module) -> TrainingCheckpoint | None:
    """The checkpoint of the next training of the current :func:`resume_in` block, or None outside one."""
    if _block is None:
        return None
    index = _block.trainings
    _block.trainings += 1
    shapes = {name: list(t.shape) for name, t in model.state_dict().items()}
    what = {"key": _block.key, "index": index, "settings": settings, "shapes": shapes}
    fingerprint = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
    return TrainingCheckpoint(_block.folder / f"train-{index}.safetensors", fingerprint, _block)


@dataclass
class Resumed:
    """What a checkpoint gives back to the loop: the epochs done and their mean losses."""

    epochs_done: int
    history: list[float]


class TrainingCheckpoint:
    """One training's state file: written atomically after each epoch, read once at the start."""

    def __init__(self, path: Path, fingerprint: str, block: ResumeBlock | None = None) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.block = block
        self.started = time.perf_counter()
        self.carried_seconds = 0.0  # this training's seconds in earlier runs, once resumed

    def save(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        scheduler: Any,
        generator: torch.Generator,
        history: list[float],
        loss_state: Any = None,
    ) -> None:
        from safetensors.torch import save

        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        state = opt.state_dict()
        for index, values in state["state"].items():
            for name, value in values.items():
                tensors[f"optim.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.generator"] = generator.get_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        meta = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "epochs_done": str(len(history)),
            "history": json.dumps(history),
            "param_groups": json.dumps(state["param_groups"]),
            "scheduler": json.dumps(None if scheduler is None else scheduler.state_dict()),
            "loss_state": json.dumps(None if loss_state is None else loss_state.training_state()),
            "seconds": repr(self.carried_seconds + time.perf_counter() - self.started),
        }
        meta["content"] = _content_digest(tensors, meta)
        blob = save(tensors, metadata=meta)
        try:
            with atomic_write(self.path) as fh:
                fh.write(blob)
        except FileNotFoundError:
            # Another run of the same work finished it and removed the scratch folder mid-write (an
            # experiment unit computed twice into one units folder): written again, into a new one.
            with atomic_write(self.path) as fh:
                fh.write(blob)

    def load(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        scheduler: Any,
        generator: torch.Generator,
        loss_state: Any = None,
    ) -> Resumed | None:
        """Restore the saved state into the given objects; None (and nothing changed) when there is no
        usable checkpoint of this very training. ``loss_state``: what the loss carries between steps
        (``training_state()`` / ``load_training_state()``, e.g. LCE's weight lambda), or None."""
        if not self.path.is_file():
            return None
        # Loaded all or nothing: a file that fails a check or a load leaves every object as it was.
        before = (
            {k: v.clone() for k, v in model.state_dict().items()},
            copy.deepcopy(opt.state_dict()),
            None if scheduler is None else copy.deepcopy(scheduler.state_dict()),
            generator.get_state(),
            torch.get_rng_state(),
            None if loss_state is None else loss_state.training_state(),
        )
        try:
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(str(self.path), framework="pt") as fh:
                meta = fh.metadata() or {}
            if meta.get("format") != FORMAT or meta.get("fingerprint") != self.fingerprint:
                self._note("was saved by another training; starting over")
                return None
            tensors = load_file(str(self.path))
            # safetensors checks the layout, not the values: a flipped or edited byte would resume
            # quietly to other weights, so the content is hashed at save and checked here.
            if meta.get("content") != _content_digest(tensors, meta):
                raise ValueError("its content does not match its digest")
            model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
            expected = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
            if {k: (v.shape, v.dtype) for k, v in model_state.items()} != expected:
                raise ValueError("its model tensors are not this model's")
            optim_state: dict[int, dict[str, torch.Tensor]] = {}
            for name, value in tensors.items():
                if name.startswith("optim."):
                    _, index, field = name.split(".", 2)
                    optim_state.setdefault(int(index), {})[field] = value
            opt_state = {"state": optim_state, "param_groups": json.loads(meta["param_groups"])}
            scheduler_state = json.loads(meta["scheduler"])
            saved_loss_state = json.loads(meta["loss_state"])
            history = [float(v) for v in json.loads(meta["history"])]
            epochs_done = int(meta["epochs_done"])
            carried = float(meta.get("seconds", "0"))  # absent in checkpoints older than the field
            if not 0 <= carried < float("inf"):
                raise ValueError("its training time is not a time")
            if epochs_done != len(history) or (scheduler is None) != (scheduler_state is None):
                raise ValueError("inconsistent checkpoint")
            if (loss_state is None) != (saved_loss_state is None):
                raise ValueError("its loss state is not this training's")
            model.load_state_dict(model_state)
            opt.load_state_dict(opt_state)
            if scheduler is not None:
                scheduler.load_state_dict(scheduler_state)
            if loss_state is not None:
                loss_state.load_training_state(saved_loss_state)
            torch.set_rng_state(tensors["rng.torch"])
            generator.set_state(tensors["rng.generator"])
            if "rng.cuda" in tensors and torch.cuda.is_available():
                torch.cuda.set_rng_state(tensors["rng.cuda"])
        except Exception as exc:  # damaged or foreign: train from the start, never trust it
            model.load_state_dict(before[0])
            opt.load_state_dict(before[1])
            if scheduler is not None:
                scheduler.load_state_dict(before[2])
            generator.set_state(before[3])
            torch.set_rng_state(before[4])
            if loss_state is not None:
                loss_state.load_training_state(before[5])
            self._note(f"could not be read ({type(exc).__name__}: {exc}); starting over")
            return None
        self.carried_seconds = carried
        self.started = time.perf_counter()
        if self.block is not None:
            self.block.carried_seconds += carried
        self._note(f"resumed after epoch {epochs_done}")
        return Resumed(epochs_done, history)

    def _note(self, message: str) -> None:
        print(f"checkpoint {self.path.parent.name}/{self.path.name}: {message}", file=sys.stderr)


def _content_digest(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """sha256 of a checkpoint's tensors (names, dtypes, shapes, bytes) and metadata (but the digest)."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "content"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\n{name} {t.dtype} {list(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
