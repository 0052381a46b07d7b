"""Loaded models behind one interface (:class:`Model`), and :func:`load_model` to open any model folder.

``load_model`` reads a bundle (``bundle.json``, from ``segqc train``: PyTorch) or an export
(``export.json``, from ``segqc export``: ONNX Runtime, no PyTorch needed). Backends are imported
only when used, so the ONNX path never imports torch.
"""

from __future__ import annotations

from pathlib import Path

from segqc.errors import BundleError
from segqc.model import Model

__all__ = ["Model", "load_model"]


def load_model(
    path: str | Path,
    *,
    device: str = "auto",
    threads: int | None = None,
    seed: int | None = None,
    trusted_key: str | Path | None = None,
) -> Model:
    """Open a model folder: a bundle (PyTorch) or an ONNX export, told apart by their manifest.

    Args:
        path: the model folder.
        device: ``auto``, ``cpu`` or ``cuda``. Defaults to ``auto``.
        threads: ONNX Runtime intra-op threads (ignored by PyTorch bundles). Defaults to its choice.
        seed: seed of stochastic read-outs (e.g. ``mcdropout``). Defaults to the model's training seed.
        trusted_key: an Ed25519 public key (PEM): the model must carry a valid signature by it
            (``segqc sign``), checked before anything else is read. Defaults to none (no signature needed).

    Raises:
        BundleError: the folder is neither, fails its checks, or (with ``trusted_key``) is not signed
            by that key.
    """
    folder = Path(path)
    signed = None
    if trusted_key is not None:
        from segqc.integrity import verify_signature

        signed = verify_signature(folder, trusted_key)
    model = _load(folder, device=device, threads=threads, seed=seed)
    if signed is not None and model.manifest_sha256 != signed:  # the folder changed while it was read
        raise BundleError(f"{folder}: the manifest changed after its signature was checked; refusing it")
    return model


def _load(folder: Path, *, device: str, threads: int | None, seed: int | None) -> Model:
    # The same order as segqc.integrity.MANIFESTS: a signature is checked on the manifest loaded here.
    if (folder / "export.json").is_file():
        from segqc.runtime.onnx_backend import load_onnx_model

        return load_onnx_model(folder, device=device, threads=threads, seed=seed)
    if (folder / "bundle.json").is_file():
        from segqc.bundle import load_bundle

        return load_bundle(folder, device=device, seed=seed)
    if not folder.is_dir():
        from segqc.models import shipped_models

        known = ", ".join(shipped_models()) or "none"
        raise BundleError(
            f"{folder}: model folder not found, and no shipped model of that name (shipped: {known})"
        )
    raise BundleError(
        f"{folder}: not a segqc model (neither bundle.json from `segqc train` nor export.json from "
        "`segqc export` is there)"
    )
