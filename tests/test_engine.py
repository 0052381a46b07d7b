"""The training loop's time budget and per-epoch hook."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from segqc.config import PipelineConfig
from segqc.engine import TimeBudgetExceeded, check_time_budget, time_budget, train_loop
from segqc.errors import SegQCError


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


def test_the_cosine_schedule_anneals_the_learning_rate_to_zero():
    seen: list[float] = []

    def record(done: int, model: nn.Module) -> None:
        seen.append(done)

    model = nn.Linear(3, 1)
    lrs: list[float] = []
    original_step = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        return original_step(self, *args, **kwargs)

    torch.optim.Adam.step = step
    try:
        train_loop(
            model,
            (torch.randn(32, 3), torch.randn(32, 1)),
            lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(),
            epochs=2,
            batch_size=8,
            lr=1e-2,
            generator=torch.Generator().manual_seed(0),
            device=torch.device("cpu"),
            progress=False,
            lr_schedule="cosine",
            on_epoch=record,
        )
    finally:
        torch.optim.Adam.step = original_step
    assert lrs[0] == pytest.approx(1e-2) and len(lrs) == 8
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # strictly decreasing, towards 0
    assert lrs[-1] < 1e-3
    assert seen == [1, 2]


def test_an_unknown_schedule_is_refused():
    with pytest.raises(SegQCError, match="lr_schedule must be one of constant, cosine"):
        tiny_fit(1, lr_schedule="step")


def test_a_setting_added_later_enters_cache_keys_only_when_set():
    """Cached units of runs made before ``seg_lr_schedule`` existed keep their keys."""
    default = PipelineConfig()
    assert "seg_lr_schedule" not in default.unit_key("f")
    assert default.unit_key("f") == {
        k: v for k, v in default.training_settings("f").items() if k != "seg_lr_schedule"
    }
    assert PipelineConfig(seg_lr_schedule="cosine").unit_key("f")["seg_lr_schedule"] == "cosine"
    with pytest.raises(SegQCError, match="seg_lr_schedule"):
        PipelineConfig(seg_lr_schedule="step")
