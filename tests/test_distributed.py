"""Training under torchrun (DistributedDataParallel, gloo on the CPU) matches a single process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from segqc.data.dataset import SegData
from segqc.data.synthetic import make_synthetic
from segqc.segmenter import Segmenter
from segqc.uncertainty import create_method
from segqc.utils import seed_everything
from tests.cli.test_cli import TINY

# Augmentation and dropout off: their random draws are per process, so with them on the runs are
# equivalent only in distribution. BatchNorm normalises each rank's half of the global batch with
# its own statistics (SyncBatchNorm needs a GPU), so the single-process reference accumulates the
# gradients of the same two halves (micro_batches=2): the same arithmetic, up to float rounding.
# Adam divides each gradient by its own running norm, so rounding in near-zero gradients can move
# a weight by a visible part of a step; hence two steps only and a tolerance of a tenth of the
# first Adam step (lr = 1e-3).
SETTINGS = dict(
    base_width=4, dropout=0.0, epochs=1, batch_size=8, seed=0, device="cpu", progress=False, augment=False
)
TOLERANCE = 1e-4

WORKER = textwrap.dedent(
    """
    import sys
    from safetensors.torch import save_file
    from segqc.data.dataset import SegData
    from segqc.data.synthetic import make_synthetic
    from segqc.engine import rank_and_world
    from segqc.segmenter import Segmenter
    images, masks, ids = make_synthetic(16, 32, seed=0)
    seg = Segmenter("msp", **{settings}).fit(SegData(images, masks, ids))
    rank, world = rank_and_world()
    assert world == 2, world
    save_file(seg.state()[0], f"{{sys.argv[1]}}/rank{{rank}}.safetensors")
    """
)


@pytest.mark.slow
def test_torchrun_two_ranks_agree_with_single_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(settings=repr(SETTINGS)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]) or "running" in name, name

    images, masks, ids = make_synthetic(16, 32, seed=0)
    single = Segmenter("msp", **SETTINGS, micro_batches=2).fit(SegData(images, masks, ids)).state()[0]
    seed_everything(SETTINGS["seed"])  # the initial weights, as fit() draws them
    initial = create_method("msp").build(base_width=4, dropout=0.0).state_dict()
    moved = max((single[k] - initial[k]).abs().max().item() for k in single if "running" not in k)
    assert moved > 10 * TOLERANCE  # training moved the weights far more than the tolerance
    for name, value in single.items():
        if value.is_floating_point() and "running" not in name:
            diff = (value - rank0[name]).abs().max().item()
            assert diff < TOLERANCE, (name, diff)


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "segqc",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    from segqc.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("data")
    ids = write_synthetic(root / "d", 24, 32, seed=0)
    (root / "split.json").write_text(f'{{"train": {ids[:16]!r}, "test": {ids[16:]!r}}}'.replace("'", '"'))
    return root


@pytest.mark.slow
def test_segqc_train_under_torchrun(small_folder, tmp_path):
    from segqc.bundle import load_bundle

    out = tmp_path / "model"
    proc = torchrun(
        "train",
        "--data",
        str(small_folder / "d"),
        "--protocol",
        str(small_folder / "split.json"),
        "--out",
        str(out),
        *TINY,
        "--force",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    bundle = load_bundle(out)  # rank 0 wrote one complete, consistent bundle
    assert bundle.config["data"]["n_train"] + bundle.config["data"]["n_calibration"] == 16
    assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_segqc_experiment_under_torchrun(small_folder, tmp_path):
    out = tmp_path / "exp"
    proc = torchrun(
        "experiment",
        "--data",
        str(small_folder / "d"),
        "--protocol",
        str(small_folder / "split.json"),
        "--methods",
        "msp",
        "--baselines",
        "none",
        "--seeds",
        "1",
        "--out",
        str(out),
        *TINY,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "results.json").is_file() and (out / "table1.md").is_file()
    assert len(list((out / "units").iterdir())) >= 3
