"""Train a segmentation network that is *not* segqc's U-Net (MONAI's ``UNet`` with residual units) on
the isic2017-600 training images, and export it to ONNX with a SPEC.json, as a user of segqc with
their own model would (``docs/your-model.md``).

Usage::

    pip install torch==2.13.0 monai
    python examples/train_monai_isic.py --data ../shared/data/isic2017 \\
        --protocol ../shared/data/isic2017/split.json --size 64 --epochs 30 --out runs/monai-isic64

Writes to ``--out``: ``model.onnx`` (NHWC float input in BGR order scaled to [0, 1] and normalised by
ImageNet statistics inside the graph; two-channel NCHW softmax probabilities out: deliberately not
segqc's own conventions), ``SPEC.json`` that describes them, ``checkpoint.safetensors`` +
``progress.json`` (the run resumes from them after an interruption) and ``train.json`` (config,
versions, data ids, per-epoch loss). Seeded (``--seed``). The model trains on the training split
less the 20% that ``segqc train --seed SEED`` holds out to calibrate its gate.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from segqc.calibration import hold_out
from segqc.data.dataset import load_split
from segqc.utils import seed_everything, versions, write_json

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class Exported(nn.Module):
    """What the ONNX file computes: NHWC BGR in [0, 1] -> normalise -> MONAI UNet -> softmax."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        # Channel statistics in the BGR order the input comes in.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN[::-1]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD[::-1]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.permute(0, 3, 1, 2) - self.mean) / self.std
        return torch.softmax(self.net(x), dim=1)


def make_net() -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=3, out_channels=2, channels=(16, 32, 64, 128),
                strides=(2, 2, 2), num_res_units=2)  # fmt: skip


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 RGB (N, H, W, 3) -> float BGR NHWC in [0, 1], the exported model's input."""
    return torch.from_numpy(images[..., ::-1].astype(np.float32) / 255.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--protocol", type=Path, required=True)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    generator = seed_everything(args.seed)
    (full,) = load_split(args.data, args.protocol, size=args.size, splits=("train",))
    # Leave out the images `segqc train --seed SEED` will hold out to calibrate the gate, so that they
    # are as unseen by this model as by segqc's own f.
    train, _ = hold_out(full, args.seed)
    net = make_net()
    model = Exported(net)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    args.out.mkdir(parents=True, exist_ok=True)
    progress_file, checkpoint = args.out / "progress.json", args.out / "checkpoint.safetensors"
    history: list[dict] = []
    if progress_file.is_file() and checkpoint.is_file():  # resume
        history = json.loads(progress_file.read_text())["history"]
        model.load_state_dict(load_file(checkpoint))
        generator = seed_everything(args.seed + len(history))
    x_all, y_all = to_input(train.images), torch.from_numpy(train.masks.astype(np.int64))
    for epoch in range(len(history), args.epochs):
        start, losses = time.perf_counter(), []
        model.train()
        for batch in torch.randperm(len(train), generator=generator).split(args.batch_size):
            x, y = x_all[batch], y_all[batch]
            if torch.rand(1, generator=generator) < 0.5:  # flips: the lesion has no orientation
                x, y = x.flip(2), y.flip(2)
            if torch.rand(1, generator=generator) < 0.5:
                x, y = x.flip(1), y.flip(1)
            probs = model(x)
            loss = nn.functional.nll_loss(torch.log(probs.clamp_min(1e-7)), y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "s": time.perf_counter() - start})
        print(f"epoch {epoch + 1}/{args.epochs}: loss {history[-1]['loss']:.4f} ({history[-1]['s']:.0f} s)")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, checkpoint)
        write_json(progress_file, {"history": history})

    model.eval()
    example = to_input(train.images[:2])
    axes = {"input": {0: "n"}, "probabilities": {0: "n"}}
    torch.onnx.export(model, (example,), args.out / "model.onnx", input_names=["input"],
                      output_names=["probabilities"], dynamic_axes=axes, opset_version=18,
                      dynamo=False)  # fmt: skip
    # The model normalises inside; segqc only scales to [0, 1] and reorders the channels.
    spec = {"input_size": [args.size, args.size], "layout": "NHWC", "output_layout": "NCHW",
            "channel_order": "BGR", "scale": 255, "output": "probabilities",
            "foreground_channel": 1}  # fmt: skip
    write_json(args.out / "SPEC.json", spec)
    write_json(args.out / "train.json", {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "network": "monai.networks.nets.UNet(2D, channels (16, 32, 64, 128), strides 2, 2 residual units)",
        "versions": versions(), "train_ids": list(train.ids), "history": history,
    })  # fmt: skip
    print(f"wrote {args.out / 'model.onnx'} and {args.out / 'SPEC.json'}")


if __name__ == "__main__":
    main()
