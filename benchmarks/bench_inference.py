"""Inference throughput of f + g (Segmenter + "uncertainty" CNN quality predictor) and its FLOP rate.

Usage::

    python benchmarks/bench_inference.py [--quick] [--sizes 64 128 224] [--width 16] [--batch 16]
        [--opt-size 224] [--small-batch 4] [--sweep 1 4 16 32] [--sweep-sizes 64 128 224]
        [--tables 1 2 3 4] [--compile] [--repeats N] [--threads N] [--out FILE]

Untrained weights (timing does not depend on them): f is ``Segmenter(method)._build()`` with a fixed
mean/std, g is ``UncertaintyCNN.from_state`` of a fresh ``QualityCNN``. Inputs are random uint8
images, so each timed call is the library's own path: ``Segmenter.predict`` (uint8 -> ``to_input``
-> method read-out) then ``CNNQualityPredictor.predict`` on its outputs.

Prints markdown tables (and writes them as JSON with ``--out``):

1. f + g throughput per uncertainty method (every name in ``segqc.uncertainty.METHODS``) and image
   size: images/s, FLOPs per image (``torch.utils.flop_counter.FlopCounterMode`` on one batch:
   convolutions and matrix products, i.e. 2 x multiply-adds), the achieved GFLOP/s and its fraction
   of this machine's float32 matrix-multiply peak measured in the same run (best of square 2048 and
   4096 products by ``torch.mm`` and by oneDNN, before and after the benchmark; see
   ``_common.matmul_peak``). Both per second of wall time and per second of process CPU time: the
   latter is robust to other jobs sharing the machine.
2. msp at ``--opt-size``: the optimisations we tried, applied from outside the library (weights in
   channels_last, BatchNorm folded into the convolutions, a smaller predict batch, ``no_grad`` vs
   ``inference_mode``, NCHW-contiguous input, one thread, TorchScript freezing, ``torch.compile``
   with ``--compile``), on the whole pipeline and on the two networks alone, timed round-robin.
3. msp at each of ``--sweep-sizes``: throughput against the predict batch size, library as is and
   with what we keep (BatchNorm folded, weights in channels_last).
4. msp at ``--opt-size``: where the time goes (``torch.profiler`` self time by operator kind), and
   the FLOP rate of the convolutions alone.

Each time is the median of several repeats after one warm-up call; the 1-minute load average is
printed before and after, and the numbers are marked as taken under load when it exceeds 1.5.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from _common import (
    add_common_args,
    finish,
    header,
    load1,
    machine_info,
    markdown_table,
    matmul_peak,
    measure,
    measure_interleaved,
)
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from segqc.data.dataset import to_input
from segqc.networks.quality_cnn import QualityCNN
from segqc.quality import create_predictor
from segqc.quality.cnn import CNNQualityPredictor, UncertaintyCNN
from segqc.segmenter import Segmenter
from segqc.types import QualitySamples
from segqc.uncertainty import METHODS

MEAN, STD = [0.6, 0.5, 0.45], [0.15, 0.15, 0.17]  # about ISIC's; any fixed values time the same


# -- building the pipeline ------------------------------------------------------------------------
def make_segmenter(method: str, width: int) -> Segmenter:
    """An untrained but ready-to-predict Segmenter (what ``fit`` leaves behind, minus training)."""
    torch.manual_seed(0)
    seg = Segmenter(method, base_width=width, device="cpu", progress=False)
    seg._build()
    seg.model_.eval()
    seg.mean_, seg.std_ = list(MEAN), list(STD)
    return seg


def make_quality(width: int) -> CNNQualityPredictor:
    """An untrained "uncertainty" CNN predictor g, loaded through its public ``from_state``."""
    torch.manual_seed(0)
    params = create_predictor("uncertainty", base_width=width, device="cpu").get_params()
    params.pop("progress", None)
    config = {"params": params, "image_mean": MEAN, "image_std": STD, "z_mean": 0.1, "z_std": 0.1}
    return UncertaintyCNN.from_state(QualityCNN(UncertaintyCNN.in_channels, width).state_dict(), config)


def run_pipeline(seg: Segmenter, g: CNNQualityPredictor, images: np.ndarray, batch: int) -> np.ndarray:
    """f then g, exactly as the library chains them: masks and maps of f are g's inputs."""
    pred = seg.predict(images, batch_size=batch)
    return g.predict(QualitySamples(images, pred.mask, pred.uncertainty), batch_size=batch)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call (FlopCounterMode: convolutions and matrix products, 2 per multiply-add)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# -- optimisations applied from outside -----------------------------------------------------------
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every eval-mode BatchNorm2d folded into the Conv2d just before it.

    Inside each ``nn.Sequential``, a ``Conv2d`` directly followed by a ``BatchNorm2d`` becomes one
    ``Conv2d`` with a bias (``w' = w * s``, ``b' = (b - mean) * s + beta``, ``s = gamma / sqrt(var +
    eps)``) and the BatchNorm becomes ``nn.Identity``, so the module tree (``encode``/``decode``,
    dropout layers) is unchanged. Valid for inference only (running statistics).
    """
    model = copy.deepcopy(model).eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            with torch.no_grad():
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                fused = nn.Conv2d(
                    conv.in_channels,
                    conv.out_channels,
                    conv.kernel_size,
                    conv.stride,
                    conv.padding,
                    conv.dilation,
                    conv.groups,
                    bias=True,
                )
                fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
                fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
            seq[i], seq[i + 1] = fused, nn.Identity()
    return model


def check_fold(width: int) -> float:
    """Largest relative difference between a U-Net with random BN statistics and its folded copy."""
    torch.manual_seed(1)
    model = make_segmenter("msp", width).model_
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.normal_(0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(bn.weight, 1.0, 0.2)
            nn.init.normal_(bn.bias, 0.0, 0.2)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        ref, out = model(x), fold_batchnorm(model)(x)
    return float((out - ref).abs().max() / ref.abs().max())


def channels_last(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to(memory_format=torch.channels_last)


def with_models(seg: Segmenter, g: CNNQualityPredictor, transform: Callable[[nn.Module], nn.Module]):
    """Copies of f and g whose networks are ``transform``-ed (the originals stay as they are).

    Deep copies, so nothing an estimator keeps between predict calls is shared with the original.
    """
    seg2, g2 = copy.deepcopy(seg), copy.deepcopy(g)
    seg2.model_, g2.model_ = transform(seg.model_), transform(g.model_)
    return seg2, g2


# -- tables -----------------------------------------------------------------------------------------
def rates(flops: int, images: int, t: dict[str, Any]) -> dict[str, Any]:
    """Throughput and FLOP rates of a measurement ``t`` (see ``_common.measure``) of ``images`` images.

    ``gflops`` is per second of wall time, ``cpu_gflops`` per second of process CPU time (robust to
    other jobs on the machine); the fractions of the peak are filled in at the end of the run.
    """
    return {
        "images_per_s": images / t["median_s"],
        "gflops": flops / t["median_s"] / 1e9,
        "cpu_gflops": flops / max(t["cpu_median_s"], 1e-9) / 1e9,
        **t,
    }


def method_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    g = make_quality(args.width)
    for method in METHODS.names():
        seg = make_segmenter(method, args.width)
        for size in args.sizes:
            images = np.random.default_rng(size).integers(0, 256, (args.batch, size, size, 3), np.uint8)
            flops = count_flops(lambda seg=seg, images=images: run_pipeline(seg, g, images, args.batch))
            t = measure(
                lambda seg=seg, images=images: run_pipeline(seg, g, images, args.batch),
                repeats=args.repeats,
                budget_s=args.budget,
            )
            rows.append(
                {
                    "method": method,
                    "size": size,
                    "batch": args.batch,
                    "ms_per_image": 1e3 * t["median_s"] / args.batch,
                    "gflop_per_image": flops / args.batch / 1e9,
                    **rates(flops, args.batch, t),
                }
            )
            print(f"  {method} {size}px: {rows[-1]['images_per_s']:.1f} img/s", flush=True)
    return rows


def optimisation_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    """msp at opt-size: every variant timed round-robin on the same images; speed-up vs. its level's first."""
    size, batch = args.opt_size, args.batch
    seg, g = make_segmenter("msp", args.width), make_quality(args.width)
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), np.uint8)
    cases: list[tuple[str, str, Callable[[], object], int, dict[str, Any]]] = []

    # The whole pipeline, through the library's predict methods.
    pipe_flops = count_flops(lambda: run_pipeline(seg, g, images, batch))
    level = "f+g pipeline"
    cases.append((level, "library as is", lambda: run_pipeline(seg, g, images, batch), pipe_flops, {}))
    for name, transform in [
        ("weights channels_last", channels_last),
        ("BN folded", fold_batchnorm),
        ("BN folded + weights channels_last", lambda m: channels_last(fold_batchnorm(m))),
    ]:
        s2, g2 = with_models(seg, g, transform)
        cases.append((level, name, lambda s2=s2, g2=g2: run_pipeline(s2, g2, images, batch), pipe_flops, {}))
    # The one-line fix for g's input layout (see the network rows): make _inputs' result channels_last.
    g_cl = copy.deepcopy(g)
    g_cl.compose = lambda x, y, z: (
        type(g).compose(g_cl, x, y, z).contiguous(memory_format=torch.channels_last)
    )
    name = "g input made channels_last"
    cases.append((level, name, lambda: run_pipeline(seg, g_cl, images, batch), pipe_flops, {}))
    if args.small_batch < batch:
        # Everything we keep at once: folded BN, channels_last weights and a smaller predict batch
        # (table 3: large batches at 224 px spill the caches and fault in fresh pages every call).
        small = args.small_batch
        s3, g3 = with_models(seg, g, lambda m: channels_last(fold_batchnorm(m)))
        name = f"BN folded + weights channels_last + predict batch {small}"
        cases.append((level, name, lambda: run_pipeline(s3, g3, images, small), pipe_flops, {}))
    threads = torch.get_num_threads()
    if threads > 1:

        def one_thread() -> None:
            torch.set_num_threads(1)
            try:
                run_pipeline(seg, g, images, batch)
            finally:
                torch.set_num_threads(threads)

        cases.append((level, f"1 thread instead of {threads}", one_thread, pipe_flops, {}))

    # The networks alone, on inputs made exactly as the library makes them: f's by to_input (a
    # permuted uint8 view made float keeps NHWC order: channels_last), g's by its _inputs (the
    # concatenation of that image with mask and map, which comes out NCHW-contiguous).
    x = to_input(images, MEAN, STD)
    pred = seg.predict(images, batch_size=batch)
    gx = g._inputs(torch.from_numpy(images), torch.from_numpy(pred.mask), torch.from_numpy(pred.uncertainty))
    for level, model, inp in [("U-Net f alone", seg.model_, x), ("quality CNN g alone", g.model_, gx)]:
        flops = count_flops(lambda model=model, inp=inp: model(inp))

        def under(ctx, model=model, inp=inp) -> Callable[[], object]:
            def call() -> None:
                with ctx():
                    model(inp)

            return call

        cl = inp.is_contiguous(memory_format=torch.channels_last)
        other_name, other = (
            ("NCHW-contiguous input", inp.contiguous())
            if cl
            else ("channels_last input", inp.contiguous(memory_format=torch.channels_last))
        )
        folded = fold_batchnorm(model)
        cases += [
            (
                level,
                f"library: inference_mode, {'channels_last' if cl else 'NCHW'} input",
                under(torch.inference_mode),
                flops,
                {},
            ),
            (level, "no_grad", under(torch.no_grad), flops, {}),
            (level, other_name, under(torch.inference_mode, inp=other), flops, {}),
            (
                level,
                "weights channels_last",
                under(torch.inference_mode, model=channels_last(model)),
                flops,
                {},
            ),
            (level, "BN folded", under(torch.inference_mode, model=folded), flops, {}),
            (
                level,
                "BN folded + weights channels_last",
                under(torch.inference_mode, model=channels_last(folded)),
                flops,
                {},
            ),
        ]
        # TorchScript (deprecated, but seconds to prepare): folds BN, fuses conv + ReLU for oneDNN.
        start = time.perf_counter()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(copy.deepcopy(model), inp)
            scripted = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            scripted(inp)
        prep_s = time.perf_counter() - start
        name = f"TorchScript freeze + optimize_for_inference (prepare {prep_s:.0f} s)"
        cases.append((level, name, under(torch.no_grad, model=scripted), flops, {"prepare_s": prep_s}))
        if args.compile:
            # Inductor with freezing: weights become constants, so it folds BatchNorm and pre-packs
            # the convolution weights for oneDNN. The first call compiles (C++ code generation).
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            compiled = torch.compile(copy.deepcopy(model))
            start = time.perf_counter()
            with torch.inference_mode():
                compiled(inp)
            compile_s = time.perf_counter() - start
            name = f"torch.compile, freezing (compile {compile_s:.0f} s)"
            cases.append(
                (level, name, under(torch.inference_mode, model=compiled), flops, {"compile_s": compile_s})
            )
        print(f"  prepared {level}", flush=True)

    times = measure_interleaved([c[2] for c in cases], repeats=args.repeats)
    rows: list[dict[str, Any]] = []
    for (level, variant, _, flops, extra), t in zip(cases, times, strict=True):
        base = next((r for r in rows if r["level"] == level), None)
        rows.append(
            {
                "level": level,
                "variant": variant,
                "speedup": (base["median_s"] if base else t["median_s"]) / t["median_s"],
                "cpu_speedup": (base["cpu_median_s"] if base else t["cpu_median_s"]) / t["cpu_median_s"],
                **rates(flops, batch, t),
                **extra,
            }
        )
    return rows


def batch_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    """msp f + g against the predict batch size, library as is and with BN folded + channels_last.

    Same images (the largest batch of ``--sweep``) for every batch size; per size, all variants
    round-robin.
    """
    n = max(args.sweep)
    seg, g = make_segmenter("msp", args.width), make_quality(args.width)
    kept = with_models(seg, g, lambda m: channels_last(fold_batchnorm(m)))
    rows = []
    for size in args.sweep_sizes:
        images = np.random.default_rng(size).integers(0, 256, (n, size, size, 3), np.uint8)
        flops = count_flops(lambda images=images: run_pipeline(seg, g, images, n))
        cases = [
            (name, b, s2, g2)
            for b in args.sweep
            for name, (s2, g2) in [("library", (seg, g)), ("kept", kept)]
        ]
        fns = [
            lambda b=b, s2=s2, g2=g2, images=images: run_pipeline(s2, g2, images, b) for _, b, s2, g2 in cases
        ]
        for (name, b, _, _), t in zip(cases, measure_interleaved(fns, repeats=args.repeats), strict=True):
            rows.append({"size": size, "batch": b, "variant": name, "images": n, **rates(flops, n, t)})
        print(f"  batch sweep {size}px done", flush=True)
    return rows


OP_KINDS = [  # (kind, substrings of aten operator names), first match wins
    ("convolution", ("conv",)),
    ("BatchNorm", ("batch_norm",)),
    ("ReLU", ("relu", "clamp_min", "threshold")),
    ("max-pool", ("max_pool",)),
    ("concatenate", ("aten::cat",)),
    ("softmax / max / mask", ("softmax", "aten::max", "aten::gt", "rsub")),
    ("input conversion (to_input, copies)", ("copy_", "aten::div", "aten::sub", "aten::mul", "_to_copy")),
]


def profile_table(args: argparse.Namespace) -> dict[str, Any]:
    """Self CPU time by operator kind for one msp f+g call at opt-size, library as is."""
    size, batch = args.opt_size, args.batch
    seg, g = make_segmenter("msp", args.width), make_quality(args.width)
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), np.uint8)
    run_pipeline(seg, g, images, batch)  # warm-up
    runs = []
    for _ in range(max(1, min(args.repeats, 3))):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run_pipeline(seg, g, images, batch)
        kinds: dict[str, float] = {}
        for event in prof.key_averages():
            kind = next((k for k, subs in OP_KINDS if any(s in event.key for s in subs)), "other")
            kinds[kind] = kinds.get(kind, 0.0) + event.self_cpu_time_total / 1e6
        runs.append(kinds)
    kinds = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in {k for r in runs for k in r}}
    total = sum(kinds.values())
    share = kinds.get("convolution", 0.0) / total
    # Counted FLOPs are the convolutions' (plus g's two tiny linear layers).
    flops = count_flops(lambda: run_pipeline(seg, g, images, batch))
    t = measure(lambda: run_pipeline(seg, g, images, batch), repeats=args.repeats, budget_s=args.budget)
    return {
        "seconds_by_kind": kinds,
        "total_s": total,
        "conv_share": share,
        "conv_gflops": flops / max(kinds.get("convolution", 0.0), 1e-9) / 1e9,
        # The profiler's share applied to the CPU time of an unprofiled call: robust to load.
        "conv_cpu_gflops": flops / max(share * t["cpu_median_s"], 1e-9) / 1e9,
        "pipeline": t,
    }


# -- printing ---------------------------------------------------------------------------------------
def pct(fraction: float) -> str:
    return f"{100 * fraction:.0f}%"


def print_tables(args: argparse.Namespace, res: dict[str, Any]) -> None:
    if res.get("methods"):
        print(f"\n## 1. f + g throughput per uncertainty method (batch {args.batch})\n")
        head = [
            "method",
            "size",
            "images/s",
            "ms/image",
            "GFLOP/image",
            "GFLOP/s",
            "% of peak",
            "% of peak (CPU time)",
        ]
        rows = [
            [
                r["method"],
                r["size"],
                f"{r['images_per_s']:.1f}",
                f"{r['ms_per_image']:.1f}",
                f"{r['gflop_per_image']:.2f}",
                f"{r['gflops']:.1f}",
                pct(r["fraction_of_peak"]),
                pct(r["cpu_fraction_of_peak"]),
            ]
            for r in res["methods"]
        ]
        print(markdown_table(head, rows))
    if res.get("optimisations"):
        print(f"\n## 2. msp at {args.opt_size} px, batch {args.batch}: what we tried\n")
        head = ["what is timed", "variant", "images/s", "speed-up", "speed-up (CPU time)", "% of peak"]
        head.append("% of peak (CPU time)")
        rows = [
            [
                r["level"],
                r["variant"],
                f"{r['images_per_s']:.1f}",
                f"{r['speedup']:.2f}x",
                f"{r['cpu_speedup']:.2f}x",
                pct(r["fraction_of_peak"]),
                pct(r["cpu_fraction_of_peak"]),
            ]
            for r in res["optimisations"]
        ]
        print(markdown_table(head, rows))
    if res.get("batch_sizes"):
        print(
            f"\n## 3. msp f + g: predict batch size ({max(args.sweep)} images per call; kept = BN folded + "
            "weights channels_last)\n"
        )
        by_key = {(r["size"], r["batch"], r["variant"]): r for r in res["batch_sizes"]}
        rows = []
        for size in args.sweep_sizes:
            for b in args.sweep:
                lib, kept = by_key[(size, b, "library")], by_key[(size, b, "kept")]
                rows.append(
                    [
                        size,
                        b,
                        f"{lib['images_per_s']:.1f}",
                        pct(lib["fraction_of_peak"]),
                        pct(lib["cpu_fraction_of_peak"]),
                        f"{kept['images_per_s']:.1f}",
                        pct(kept["fraction_of_peak"]),
                        pct(kept["cpu_fraction_of_peak"]),
                    ]
                )
        head = ["size", "batch", "library: images/s", "% of peak", "% of peak (CPU time)"]
        head += ["kept: images/s", "% of peak", "% of peak (CPU time)"]
        print(markdown_table(head, rows))
    prof = res.get("profile")
    if prof:
        print(
            f"\n## 4. msp f + g at {args.opt_size} px, batch {args.batch}: where the time goes (profiler)\n"
        )
        kinds = sorted(prof["seconds_by_kind"].items(), key=lambda kv: -kv[1])
        rows = [[k, f"{s:.3f}", pct(s / prof["total_s"])] for k, s in kinds]
        print(markdown_table(["operator kind", "self time (s)", "share"], rows))
        print(
            f"\nconvolutions alone: {prof['conv_gflops']:.1f} GFLOP/s = {pct(prof['conv_fraction_of_peak'])} "
            f"of the peak ({pct(prof['conv_cpu_fraction_of_peak'])} by CPU time)"
        )
    msp = [r for r in res.get("methods", []) if r["method"] == "msp" and r["size"] == args.opt_size]
    pipe = [r for r in res.get("optimisations", []) if r["level"] == "f+g pipeline"]
    if msp or pipe:
        parts = []
        if msp:
            r = msp[0]
            cpu = pct(r["cpu_fraction_of_peak"])
            parts.append(f"library as is {pct(r['fraction_of_peak'])} ({cpu} by CPU time; table 1)")
        if pipe:
            r = max(pipe, key=lambda r: r["fraction_of_peak"])
            parts.append(
                f"best pipeline variant ({r['variant']}) {pct(r['fraction_of_peak'])} "
                f"({pct(r['cpu_fraction_of_peak'])} by CPU time; table 2)"
            )
        print(f"\ngoal (msp f + g at {args.opt_size} px >= 70% of the peak): " + "; ".join(parts))


# -- main ---------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="default 64 128 224")
    parser.add_argument("--width", type=int, default=16, help="U-Net and g base width")
    parser.add_argument("--batch", type=int, default=None, help="predict batch size (default 16)")
    parser.add_argument("--opt-size", type=int, default=None, help="size of tables 2-4 (default 224)")
    parser.add_argument("--sweep", type=int, nargs="+", default=None, help="batch sizes of table 3")
    parser.add_argument("--sweep-sizes", type=int, nargs="+", default=None, help="image sizes of table 3")
    parser.add_argument("--small-batch", type=int, default=4, help="predict batch of table 2's last variant")
    parser.add_argument("--tables", type=int, nargs="+", default=[1, 2, 3, 4], help="which tables (1-4)")
    parser.add_argument("--compile", action="store_true", help="also try torch.compile in table 2 (minutes)")
    parser.add_argument("--budget", type=float, default=None, help="stop repeats after this many s")
    add_common_args(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    args.sizes = args.sizes or ([32] if quick else [64, 128, 224])
    args.batch = args.batch or (4 if quick else 16)
    args.opt_size = args.opt_size or (32 if quick else 224)
    args.sweep = args.sweep or ([1, 4] if quick else [1, 4, 16, 32])
    args.sweep_sizes = args.sweep_sizes or ([32] if quick else [64, 128, 224])
    args.repeats = args.repeats or (2 if quick else 3)
    args.budget = args.budget or (5.0 if quick else 15.0)
    peak_sizes, peak_repeats = ((512, 1024), 2) if quick else ((2048, 4096), 3)

    machine = machine_info()
    before = load1()
    print(header("segqc inference benchmark (f + g)", machine, before), flush=True)
    peaks = [matmul_peak(peak_sizes, peak_repeats)]
    print(f"- float32 matrix-multiply peak (before): {peaks[0]['gflops']:.1f} GFLOP/s", flush=True)
    fold_err = check_fold(4 if quick else args.width)
    print(f"- BN folding check: max relative difference {fold_err:.1e}", flush=True)

    res: dict[str, Any] = {}
    steps = [
        (1, "methods", method_table),
        (2, "optimisations", optimisation_table),
        (3, "batch_sizes", batch_table),
        (4, "profile", profile_table),
    ]
    for number, key, fn in steps:
        if number in args.tables:
            print(f"measuring table {number} ...", flush=True)
            res[key] = fn(args)
    peaks.append(matmul_peak(peak_sizes, peak_repeats))
    # Fractions are against the best peak seen in the run (the conservative choice).
    peak, cpu_peak = max(p["gflops"] for p in peaks), max(p["cpu_gflops"] for p in peaks)
    for row in [*res.get("methods", []), *res.get("optimisations", []), *res.get("batch_sizes", [])]:
        row["fraction_of_peak"] = row["gflops"] / peak
        row["cpu_fraction_of_peak"] = row["cpu_gflops"] / cpu_peak
    if "profile" in res:
        res["profile"]["conv_fraction_of_peak"] = res["profile"]["conv_gflops"] / peak
        res["profile"]["conv_cpu_fraction_of_peak"] = res["profile"]["conv_cpu_gflops"] / cpu_peak

    print(
        f"\n- float32 matrix-multiply peak: {peak:.1f} GFLOP/s = best of square products of n = "
        f"{', '.join(map(str, peak_sizes))}, before and after the run: torch.mm (MKL) "
        f"{max(max(p['mm_gflops'].values()) for p in peaks):.1f}, 1x1 convolution as a GEMM (oneDNN) "
        f"{max(max(p['onednn_gemm_gflops'].values()) for p in peaks):.1f}; per second of CPU time "
        f"{cpu_peak:.1f} (the '% of peak (CPU time)' columns: FLOPs per CPU-second of the process over "
        "this, i.e. per-core efficiency, robust to other jobs on the machine)"
    )
    print(f"- width {args.width}; times are medians of up to {args.repeats} repeats after a warm-up")
    print_tables(args, res)
    results = {
        "machine": machine,
        "settings": {k: (str(v) if k == "out" else v) for k, v in vars(args).items()},
        "peak": {"gflops": peak, "cpu_gflops": cpu_peak, "runs": peaks},
        "fold_check_max_rel_diff": fold_err,
        **res,
    }
    finish(results, args.out, before)


if __name__ == "__main__":
    main()
