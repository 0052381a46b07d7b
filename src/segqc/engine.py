"""Training and inference loops shared by f and g: plain Python, no callbacks.

Distributed data parallel training comes for free under ``torchrun``: when ``WORLD_SIZE > 1`` the
loop joins the process group (gloo on the CPU, nccl on CUDA), wraps the model in
DistributedDataParallel and gives each rank its share of every global batch, as
DistributedSampler would. Only rank 0 shows progress; callers write files on rank 0 only
(:func:`is_main_process`).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from segqc.checkpoint import next_checkpoint
from segqc.config import check_lr_schedule
from segqc.errors import SegQCError


class TimeBudgetExceeded(SegQCError):
    """The run's time budget (:func:`time_budget`) ran out; what finished before it is kept."""


_deadline: float | None = None  # time.monotonic() at which work stops; None: no budget


@contextlib.contextmanager
def time_budget(seconds: float | None) -> Iterator[None]:
    """Stop work that checks :func:`check_time_budget` (every training batch, every unit of an
    experiment) once ``seconds`` have passed, by raising :class:`TimeBudgetExceeded`."""
    global _deadline
    previous = _deadline
    if seconds is not None:
        _deadline = time.monotonic() + float(seconds)
    try:
        yield
    finally:
        _deadline = previous


def check_time_budget() -> None:
    """Raise :class:`TimeBudgetExceeded` when the budget of :func:`time_budget` has run out."""
    if _deadline is not None and time.monotonic() >= _deadline:
        raise TimeBudgetExceeded("the time budget ran out")


def init_distributed() -> bool:
    """Join the torchrun process group if this process was started by torchrun with several ranks."""
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of ranks; torchrun's variables before the group is joined."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True on rank 0 (and in a plain single-process run): the process that writes files and logs."""
    return rank_and_world()[0] == 0


def barrier() -> None:
    """Wait for every rank (no-op outside torchrun), e.g. until rank 0 has written a file."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def train_loop(
    model: nn.Module,
    tensors: tuple[Tensor, ...],
    step: Callable[[nn.Module, tuple[Tensor, ...]], Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    device: torch.device,
    desc: str = "train",
    progress: bool = True,
    micro_batches: int = 1,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    lr_schedule: str = "constant",
    loss_state: Any = None,
) -> list[float]:
    """Adam on shuffled mini-batches; ``step(model, batch)`` returns the batch loss.

    ``tensors`` are aligned along the first axis and stay on the CPU (pinned when training on
    CUDA); each batch is moved to ``device``. On CUDA the step runs under bf16 autocast. Under
    torchrun, ``batch_size`` is the global batch, split evenly over the ranks; every rank draws
    the same shuffling from ``generator``. ``micro_batches > 1`` splits each batch into that many
    interleaved parts and accumulates their gradients: the same arithmetic as that many ranks
    (BatchNorm statistics per part included). Returns the mean loss of each epoch (of this rank).
    After the first epoch it prints how long the whole training should take; under a
    :func:`time_budget` every batch checks the budget. ``on_epoch(epochs_done, model)``, if given,
    runs after every epoch (e.g. a validation score for a learning curve); it must leave ``model``
    in train mode (it runs only for the epochs this call trains). Inside
    :func:`segqc.checkpoint.resume_in` the loop saves its state after every epoch and resumes from it.
    ``lr_schedule``: ``"constant"`` (the paper's Adam at ``lr``) or ``"cosine"``
    (annealed from ``lr`` to 0 over all steps, Loshchilov & Hutter 2017: the last weights are those
    of a settled optimiser rather than of one more noisy step). ``loss_state``: an object whose state
    ``step`` changes from one step to the next (``training_state()`` / ``load_training_state()``, e.g.
    LCE's method), saved and restored with the loop's.
    """
    distributed = init_distributed()
    rank, world = rank_and_world()
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        tensors = tuple(t.pin_memory() for t in tensors)
    net: nn.Module = model
    if distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    check_lr_schedule(lr_schedule)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(tensors[0])
    batches = math.ceil(n / batch_size)
    history: list[float] = []
    scheduler = None
    if lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * batches))
    # Inside segqc.checkpoint.resume_in the state is saved after every epoch and a rerun resumes
    # (one process only: under torchrun the ranks would race for one file).
    settings = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "lr_schedule": lr_schedule}
    # The kind of device too: bf16 autocast on CUDA, float32 on a CPU (a run on "auto" may move hosts).
    settings.update(samples=n, micro_batches=micro_batches, desc=desc, device=device.type)
    checkpoint = None if distributed else next_checkpoint(settings, model)
    resumed = None
    if checkpoint is not None:
        resumed = checkpoint.load(model, opt, scheduler, generator, loss_state)
    first = 0 if resumed is None else min(resumed.epochs_done, epochs)
    if resumed is not None:
        history = resumed.history[:first]
    net.train()
    show = progress and rank == 0
    started = time.perf_counter()
    with tqdm(total=epochs * batches, desc=desc, disable=not show, unit="batch", leave=False) as bar:
        bar.update(first * batches)
        for epoch in range(first, epochs):
            order = torch.randperm(n, generator=generator)
            total, count = 0.0, 0
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                bar.update(1)
                check_time_budget()
                # BatchNorm cannot train on a single sample; decided on the global batch so ranks agree.
                if len(idx) < 2 * world * micro_batches:
                    continue
                idx = idx[rank::world]
                opt.zero_grad(set_to_none=True)
                for part in range(micro_batches):
                    sub = idx[part::micro_batches]
                    batch = tuple(t[sub].to(device, non_blocking=True) for t in tensors)
                    with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext():
                        loss = step(net, batch) / micro_batches
                    loss.backward()
                    total += loss.item() * micro_batches * len(sub)
                    count += len(sub)
                opt.step()
                if scheduler is not None:
                    scheduler.step()
            history.append(total / max(count, 1))
            bar.set_postfix(epoch=epoch + 1, loss=f"{history[-1]:.4f}")
            if on_epoch is not None:
                on_epoch(epoch + 1, model)
            if checkpoint is not None:
                checkpoint.save(model, opt, scheduler, generator, history, loss_state)
            if epoch == first and show and epochs > first + 1:
                took = time.perf_counter() - started
                tqdm.write(
                    f"{desc}: first epoch {took:.1f} s, about {took * (epochs - first):.0f} s for "
                    f"{epochs - first} epochs",
                    file=sys.stderr,
                )
    model.eval()
    return history
