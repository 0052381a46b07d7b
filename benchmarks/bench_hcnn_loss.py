"""HCNN's training loss: the two-class closed form against the softmax form, alone and in a whole step.

Usage::

    python benchmarks/bench_hcnn_loss.py [--quick] [--sizes 64 128] [--batch 16] [--samples 100]
        [--width 16] [--repeats N] [--threads N] [--out FILE]

HCNN's loss draws ``T`` (100) Gaussian logit samples per pixel and class. For two classes
``segqc.networks.functional.heteroscedastic_nll`` computes ``log softmax(z)[t]`` as
``-softplus(z_other - z_t)`` on the same draws; the softmax form (``log_softmax`` over the class axis
and a gather, what it computed before) is written out here as the reference. For each image size,
timed round-robin after a warm-up (medians of wall and CPU time):

- **loss**: drawing the noise, the loss and its backward pass on a batch of f's outputs;
- **step**: one whole training step of hcnn's f (U-Net forward, the loss, backward, Adam).

Prints markdown tables; ``--out`` writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import torch
from _common import add_common_args, finish, header, load1, machine_info, markdown_table, measure_interleaved
from torch import Tensor

from segqc.networks.functional import heteroscedastic_nll
from segqc.uncertainty import create_method
from segqc.uncertainty.hcnn import predicted_variance


def softmax_form(logits: Tensor, variance: Tensor, target: Tensor, noise: Tensor) -> Tensor:
    """The loss as the softmax over classes computes it (the reference; any number of classes)."""
    noisy = logits.unsqueeze(0) + variance.sqrt()[None, :, None] * noise
    index = target.unsqueeze(0).unsqueeze(2).expand(noise.shape[0], -1, 1, -1, -1)
    log_p = noisy.log_softmax(dim=2).gather(2, index).squeeze(2)
    return (math.log(noise.shape[0]) - torch.logsumexp(log_p, dim=0)).mean()


FORMS = {"two-class form": heteroscedastic_nll, "softmax form": softmax_form}


def one_size(args: argparse.Namespace, size: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(size)
    images = torch.randn(args.batch, 3, size, size, generator=g)
    target = torch.randint(0, 2, (args.batch, size, size), generator=g)
    method = create_method("hcnn", samples=args.samples)
    torch.manual_seed(0)
    model = method.build(base_width=args.width)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with torch.no_grad():
        output = model(images)
    logits = output[:, :2].clone().requires_grad_()
    variance = predicted_variance(output).clone().requires_grad_()

    def loss_only(form):
        def run() -> None:
            noise = torch.randn((args.samples, *logits.shape))
            form(logits, variance, target, noise).backward()

        return run

    def step(form):
        def run() -> None:
            out = model(images)
            noise = torch.randn((args.samples, args.batch, 2, size, size))
            loss = form(out[:, :2], predicted_variance(out), target, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return run

    torch.manual_seed(1)
    noise = torch.randn((args.samples, *logits.shape))
    with torch.no_grad():
        values = {name: float(form(logits, variance, target, noise)) for name, form in FORMS.items()}
    loss_t = measure_interleaved([loss_only(f) for f in FORMS.values()], repeats=args.repeats)
    step_t = measure_interleaved([step(f) for f in FORMS.values()], repeats=args.repeats)
    return {
        "size": size,
        "values": values,
        "loss": dict(zip(FORMS, loss_t, strict=True)),
        "step": dict(zip(FORMS, step_t, strict=True)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--width", type=int, default=16)
    add_common_args(ap)
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.batch, args.samples, args.width = [16], 2, 10, 4
    args.repeats = args.repeats or (2 if args.quick else 7)
    if args.threads:
        torch.set_num_threads(args.threads)
    before = load1()
    machine = machine_info()
    print(header("HCNN loss: two-class closed form against softmax form", machine, before))
    results: dict[str, Any] = {"machine": machine, "batch": args.batch, "samples": args.samples, "sizes": []}
    rows = []
    for size in args.sizes:
        r = one_size(args, size)
        results["sizes"].append(r)
        for part in ("loss", "step"):
            new, old = r[part]["two-class form"], r[part]["softmax form"]
            rows.append(
                [
                    size,
                    part,
                    f"{old['median_s'] * 1e3:.0f} / {old['cpu_median_s'] * 1e3:.0f}",
                    f"{new['median_s'] * 1e3:.0f} / {new['cpu_median_s'] * 1e3:.0f}",
                    f"{old['cpu_median_s'] / new['cpu_median_s']:.2f}x",
                ]
            )
        v = r["values"]
        print(
            f"size {size}: loss {v['softmax form']:.6f} (softmax form), "
            f"{v['two-class form']:.6f} (two-class form)"
        )
    head = ["px", "timed", "softmax form ms (wall / CPU)", "two-class form ms (wall / CPU)", "CPU speed-up"]
    print("\n" + markdown_table(head, rows))
    finish(results, args.out, before)


if __name__ == "__main__":
    main()
