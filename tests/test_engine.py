"""The training loop's time budget and per-epoch hook."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from segqc.engine import TimeBudgetExceeded, check_time_budget, time_budget, train_loop


def tiny_fit(epochs: int, **kwargs) -> list[float]:
    model = nn.Linear(3, 1)
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    return train_loop(
        model,
        (x, y),
        lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(),
        epochs=epochs,
        batch_size=8,
        lr=1e-2,
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
        progress=False,
        **kwargs,
    )


def test_no_budget_runs_every_epoch_and_calls_the_hook_after_each():
    seen: list[tuple[int, bool]] = []
    history = tiny_fit(3, on_epoch=lambda done, model: seen.append((done, model.training)))
    assert len(history) == 3
    assert seen == [(1, True), (2, True), (3, True)]


def test_an_exhausted_budget_stops_training_with_a_clear_error():
    with time_budget(0.05):
        time.sleep(0.06)
        with pytest.raises(TimeBudgetExceeded, match="time budget"):
            tiny_fit(2)


def test_the_budget_ends_with_its_block_and_nests():
    with time_budget(0.01), time_budget(None):  # None keeps the outer budget
        time.sleep(0.02)
        with pytest.raises(TimeBudgetExceeded):
            check_time_budget()
    check_time_budget()  # no budget outside the block
    assert len(tiny_fit(1)) == 1
