"""The segmentation stage f: a U-Net trained and read out through an uncertainty method."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from segqc.data.dataset import SegData, channel_stats, to_input
from segqc.data.transforms import random_dihedral
from segqc.engine import train_loop
from segqc.errors import NotFittedError
from segqc.networks.graphs import Normalize, TorchRunner
from segqc.networks.inference import cached_inference_copy
from segqc.postprocess import pixel_batch, segment_batches
from segqc.types import SegPrediction
from segqc.uncertainty import create_method
from segqc.utils import resolve_device, seed_everything


class Segmenter:
    """Segmentation network f with a per-pixel uncertainty map (scikit-learn style).

    Args:
        method: uncertainty method name (see ``segqc.uncertainty.METHODS``). Defaults to ``"msp"``.
        method_params: settings of the method, e.g. ``{"samples": 20}``. Defaults to none.
        base_width: U-Net width. Defaults to 16.
        dropout: dropout on the central blocks. Defaults to 0.5.
        epochs: training epochs (paper: 120). Defaults to 10.
        batch_size: Defaults to 16 (paper).
        lr: Adam learning rate. Defaults to 1e-3 (paper).
        lr_schedule: ``"constant"`` (paper) or ``"cosine"`` (annealed to 0 over the training; see
            :func:`segqc.engine.train_loop`). Defaults to ``"constant"``.
        seed: fixes initialisation, data order, augmentation and sampling. Defaults to 0.
        augment: random flips and 90-degree rotations while training. Defaults to True.
        micro_batches: split each batch into this many parts and accumulate their gradients
            (less memory; BatchNorm then sees each part). Defaults to 1.
        device: ``auto``, ``cpu`` or ``cuda``. Defaults to ``auto``.
        progress: show a progress bar. Defaults to True.

    Examples::

        seg = Segmenter("msp", epochs=2).fit(train)      # train: SegData
        pred = seg.predict(test.images)                  # SegPrediction: probs, mask, uncertainty
    """

    def __init__(
        self,
        method: str = "msp",
        *,
        method_params: dict[str, Any] | None = None,
        base_width: int = 16,
        dropout: float = 0.5,
        epochs: int = 10,
        batch_size: int = 16,
        lr: float = 1e-3,
        lr_schedule: str = "constant",
        seed: int = 0,
        augment: bool = True,
        micro_batches: int = 1,
        device: str = "auto",
        progress: bool = True,
    ) -> None:
        self.method = method
        self.method_params = method_params
        self.base_width = base_width
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.seed = seed
        self.augment = augment
        self.micro_batches = micro_batches
        self.device = device
        self.progress = progress

    def get_params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_")}

    def _build(self) -> None:
        self.method_ = create_method(self.method, **(self.method_params or {}))
        self.model_: nn.Module = self.method_.build(base_width=self.base_width, dropout=self.dropout)

    def fit(self, data: SegData, *, on_epoch: Callable[[int, nn.Module], None] | None = None) -> Segmenter:
        """Train f on ``data``; ``on_epoch`` is :func:`~segqc.engine.train_loop`'s per-epoch hook."""
        if len(data) < 2:
            raise ValueError("training f needs at least 2 images")
        generator = seed_everything(self.seed)
        device = resolve_device(self.device)
        self._build()
        self.mean_, self.std_ = channel_stats(data.images)
        model = self.model_.to(device)
        mean, std = self.mean_, self.std_

        def step(model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
            images, masks = batch
            x = to_input(images, mean, std)
            if self.augment:
                x, masks = random_dihedral(x, masks, generator=generator)
            return self.method_.loss(model(x), masks.long())

        self.history_ = train_loop(
            model,
            (torch.from_numpy(data.images), torch.from_numpy(data.masks)),
            step,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            generator=generator,
            device=device,
            desc=f"f ({self.method})",
            progress=self.progress,
            micro_batches=self.micro_batches,
            on_epoch=on_epoch,
            lr_schedule=self.lr_schedule,
            loss_state=self.method_,  # LCE's lambda, adapted after every step
        )
        self.model_ = model.cpu().eval()
        self.rng_ = np.random.default_rng(self.seed)
        return self

    def predict(
        self,
        images: np.ndarray,
        *,
        batch_size: int | None = None,
        rng: np.random.Generator | int | None = None,
    ) -> SegPrediction:
        """Segment ``(N, H, W, 3)`` uint8 images (any H = W divisible by 16).

        Runs the method's graphs (:meth:`UncertaintyMethod.graphs`) on a BatchNorm-folded,
        channels_last copy of f (same outputs up to float rounding), kept on its device between
        calls, and reads them out with the method's NumPy ``read_out``, as the ONNX backend does.
        ``batch_size`` defaults to about 2**16 pixels per batch on a CPU (cache-friendly) and 32
        images on a GPU. ``rng`` (a generator or a seed) drives stochastic read-outs; by default they
        continue this segmenter's own generator, seeded with ``seed`` when it was fitted or loaded.
        """
        if not hasattr(self, "model_"):
            raise NotFittedError("this Segmenter is not fitted yet; call fit() first")
        device = resolve_device(self.device)
        run, layout = self._runner(device, images.shape[1])
        if batch_size is None:
            batch_size = 32 if device.type == "cuda" else pixel_batch(*images.shape[1:3])
        if rng is None and not hasattr(self, "rng_"):  # loaded (or set by hand): start at ``seed``
            self.rng_ = np.random.default_rng(self.seed)
        generator = self.rng_ if rng is None else np.random.default_rng(rng)
        return segment_batches(
            lambda part: self.method_.read_out(run, part, generator, layout), images, batch_size
        )

    def _runner(self, device: torch.device, size: int) -> tuple[TorchRunner, dict[str, Any]]:
        """The method's graphs on the inference copy of f, cached per device and image size."""
        model = cached_inference_copy(self, self.model_, device)
        key = (model, device, size)
        if getattr(self, "_graphs", (None,))[0] != key:
            normalize = Normalize(self.mean_, self.std_).to(device)
            example = torch.zeros((1, size, size, 3), dtype=torch.uint8, device=device)
            graphs, layout = self.method_.graphs(model, normalize, example)
            self._graphs = (key, TorchRunner(graphs, device), layout)
        return self._graphs[1], self._graphs[2]

    # -- persistence: tensors for safetensors, a JSON-able config ---------------------------------
    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        if not hasattr(self, "model_"):
            raise NotFittedError("this Segmenter is not fitted yet")
        config = {"params": self.get_params(), "mean": self.mean_, "std": self.std_}
        config["params"].pop("progress", None)
        return {k: v.detach().cpu().contiguous() for k, v in self.model_.state_dict().items()}, config

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], config: dict[str, Any]) -> Segmenter:
        seg = cls(**config["params"], progress=False)
        seg._build()
        seg.model_.load_state_dict(tensors)
        seg.model_.eval()
        seg.mean_, seg.std_ = list(config["mean"]), list(config["std"])
        return seg
