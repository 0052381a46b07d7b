"""Resumable trainings: stopped after any epoch and resumed, they end where uninterrupted ones do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from segqc.checkpoint import resume_in
from segqc.engine import train_loop


class Stop(Exception):
    pass


def fit(epochs: int = 4, kill_in: int | None = None, schedule: str = "cosine"):
    """A small net with dropout and BatchNorm (global random state, running buffers) and a shuffling
    generator, seeded as a caller would; returns (weights, history, epochs seen by the hook).
    ``kill_in``: the run dies at the end of that epoch, before its state is saved (its work is lost)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 1))
    data = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 3, generator=data), torch.randn(40, 1, generator=data)
    seen: list[int] = []

    def hook(done: int, _model: nn.Module) -> None:
        seen.append(done)
        if done == kill_in:
            raise Stop

    history = train_loop(
        model,
        (x, y),
        lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(),
        epochs=epochs,
        batch_size=8,
        lr=1e-2,
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
        progress=False,
        on_epoch=hook,
        lr_schedule=schedule,
    )
    return model.state_dict(), history, seen


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
@pytest.mark.parametrize("kill_in", [2, 4])
def test_stopped_and_resumed_equals_uninterrupted(tmp_path, schedule, kill_in):
    weights, history, _ = fit(schedule=schedule)
    with resume_in(tmp_path, key="run"), pytest.raises(Stop):
        fit(kill_in=kill_in, schedule=schedule)
    assert (tmp_path / "train-0.safetensors").is_file()
    with resume_in(tmp_path, key="run"):
        resumed, resumed_history, seen = fit(schedule=schedule)
    assert seen == list(range(kill_in, 5))  # from the epoch that was lost
    assert resumed_history == history
    assert same_weights(resumed, weights)
    # a finished training resumes to its end without training again
    with resume_in(tmp_path, key="run"):
        again, again_history, seen = fit(schedule=schedule)
    assert seen == [] and again_history == history and same_weights(again, weights)


def test_another_key_or_setting_or_a_damaged_file_starts_over(tmp_path, capsys):
    weights, history, _ = fit()
    with resume_in(tmp_path, key="run"), pytest.raises(Stop):
        fit(kill_in=3)
    with resume_in(tmp_path, key="another run"), pytest.raises(Stop):
        fit(kill_in=3)
    assert "saved by another training" in capsys.readouterr().err
    with resume_in(tmp_path, key="another run"), pytest.raises(Stop):  # more epochs: another training
        fit(epochs=5, kill_in=1)
    assert "saved by another training" in capsys.readouterr().err
    path = tmp_path / "train-0.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with resume_in(tmp_path, key="another run"):
        again, again_history, seen = fit()
    assert seen == [1, 2, 3, 4] and "could not be read" in capsys.readouterr().err
    assert again_history == history and same_weights(again, weights)


def test_each_training_of_a_block_has_its_own_file_and_nothing_is_saved_outside_one(tmp_path):
    with resume_in(tmp_path / "a", key=1):
        fit(epochs=1)
        fit(epochs=1)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["train-0.safetensors", "train-1.safetensors"]
    with resume_in(None):
        fit(epochs=1)
    fit(epochs=1)
    assert sorted(Path(tmp_path).iterdir()) == [tmp_path / "a"]


def _nan_weight(tensors: dict, meta: dict) -> None:
    tensors["model.0.weight"][0, 0] = float("nan")


def _no_optimiser_state(tensors: dict, meta: dict) -> None:
    for name in [k for k in tensors if k.startswith("optim.0.")]:
        del tensors[name]


def _wrong_dtype(tensors: dict, meta: dict) -> None:
    tensors["model.0.weight"] = tensors["model.0.weight"].double()


def _other_schedule_state(tensors: dict, meta: dict) -> None:
    meta["scheduler"] = json.dumps({**json.loads(meta["scheduler"]), "last_epoch": 0})


def _more_epochs_done(tensors: dict, meta: dict) -> None:
    meta["epochs_done"] = "3"
    meta["history"] = json.dumps([*json.loads(meta["history"]), 0.5])


def _short_rng_state(tensors: dict, meta: dict) -> None:
    tensors["rng.torch"] = tensors["rng.torch"][:10]


def _missing_model_tensor(tensors: dict, meta: dict) -> None:
    del tensors["model.0.weight"]


def _no_param_groups(tensors: dict, meta: dict) -> None:
    meta["param_groups"] = "[]"


EDITS = [_nan_weight, _no_optimiser_state, _other_schedule_state, _more_epochs_done]  # caught by the digest
UNLOADABLE = [_wrong_dtype, _short_rng_state, _missing_model_tensor, _no_param_groups]  # also by the checks


@pytest.mark.parametrize(
    ("tamper", "redigest"),
    [(t, False) for t in EDITS + UNLOADABLE] + [(t, True) for t in UNLOADABLE],
)
def test_a_checkpoint_with_its_fingerprint_but_other_content_starts_over(tmp_path, capsys, tamper, redigest):
    """The fingerprint names the training, not its state: a file whose tensors or metadata were changed
    (damage, or an edit) never resumes to other weights and never crashes the loop; with its digest
    redone, the checks that remain still refuse what cannot be loaded, leaving the objects untouched."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save

    from segqc.checkpoint import _content_digest

    weights, history, _ = fit()
    with resume_in(tmp_path, key="run"), pytest.raises(Stop):
        fit(kill_in=3)
    path = tmp_path / "train-0.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(path))
    tamper(tensors, meta)
    if redigest:
        meta["content"] = _content_digest(tensors, meta)
    path.write_bytes(save(tensors, metadata=meta))
    capsys.readouterr()
    with resume_in(tmp_path, key="run"):
        again, again_history, seen = fit()
    assert seen == [1, 2, 3, 4] and "could not be read" in capsys.readouterr().err
    assert again_history == history and same_weights(again, weights)


@pytest.mark.parametrize("method", ["lce", "hcnn", "ensemble"])
def test_a_loss_with_its_own_state_resumes_exactly(one_thread, tmp_path, monkeypatch, method):
    """LCE's loss adapts its weight lambda after every step, HCNN's and LCE's draw random numbers, an
    ensemble trains several members: killed after an epoch and resumed, f ends where it would have."""
    import segqc.checkpoint as checkpoint
    from segqc.data.dataset import SegData
    from segqc.data.synthetic import make_synthetic
    from segqc.segmenter import Segmenter

    data = SegData(*make_synthetic(16, 32, seed=5))

    def make() -> Segmenter:
        return Segmenter(method, epochs=3, base_width=4, batch_size=8, device="cpu", progress=False)

    weights = make().fit(data).model_.state_dict()
    real_save = checkpoint.TrainingCheckpoint.save

    def save_then_die(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        raise Stop

    with monkeypatch.context() as mp:
        mp.setattr(checkpoint.TrainingCheckpoint, "save", save_then_die)
        with resume_in(tmp_path, key="run"), pytest.raises(Stop):
            make().fit(data)
    with resume_in(tmp_path, key="run"):
        assert same_weights(make().fit(data).model_.state_dict(), weights)


def test_the_fingerprint_names_the_kind_of_device(tmp_path, monkeypatch):
    """f trains under bf16 autocast on CUDA and in float32 on a CPU: a run with device "auto" killed on
    a GPU host and rerun on a CPU one must start over, not go on from the GPU's weights."""
    import segqc.engine as engine

    seen: list[dict] = []
    real = engine.next_checkpoint

    def record(settings: dict, model: nn.Module):
        seen.append(settings)
        return real(settings, model)

    monkeypatch.setattr(engine, "next_checkpoint", record)
    with resume_in(tmp_path, key="run"):
        fit(epochs=1)
    assert seen[0]["device"] == "cpu"


def test_a_scratch_folder_removed_mid_save_does_not_stop_the_training(tmp_path, monkeypatch):
    """Two runs computing one experiment unit into one units folder: the first to finish stores it and
    removes its scratch folder, maybe while the other writes its checkpoint there; that one goes on."""
    import contextlib
    import shutil

    import segqc.checkpoint as checkpoint

    weights, history, _ = fit()
    real = checkpoint.atomic_write
    raced: list[Path] = []

    @contextlib.contextmanager
    def racing(path, *args, **kwargs):
        with real(path, *args, **kwargs) as fh:
            yield fh
            if not raced:  # the other run removes the folder between the write and the rename
                raced.append(path)
                shutil.rmtree(path.parent)

    monkeypatch.setattr(checkpoint, "atomic_write", racing)
    with resume_in(tmp_path / "scratch", key="run"):
        again, again_history, _ = fit()
    assert raced and again_history == history and same_weights(again, weights)
    assert (tmp_path / "scratch" / "train-0.safetensors").is_file()


def test_a_block_without_a_folder_inside_one_is_not_resumable(tmp_path):
    """resume_in(None) (e.g. a torchrun rank that is not the main one) means no checkpoint, even inside
    an outer block: its trainings must not take the outer block's files."""
    with resume_in(tmp_path, key="outer"), resume_in(None):
        fit(epochs=1)
    assert list(tmp_path.iterdir()) == []


def test_a_resumed_training_carries_the_seconds_it_ran_before(tmp_path, monkeypatch):
    from segqc import checkpoint

    class Clock:  # 10 s pass between any two readings
        now = 0.0

        @classmethod
        def perf_counter(cls) -> float:
            cls.now += 10.0
            return cls.now

    monkeypatch.setattr(checkpoint, "time", Clock)
    with resume_in(tmp_path, key="run") as block, pytest.raises(Stop):
        fit(kill_in=3)
    assert block.carried_seconds == 0.0  # nothing was resumed in the first run
    with resume_in(tmp_path, key="run") as block:
        fit()
    # saved after epoch 2: two saves after the checkpoint's start, 10 s per reading
    assert block.carried_seconds == 20.0
    with resume_in(None) as nothing:
        assert nothing is None
