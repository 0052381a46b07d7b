"""``segqc sign`` and ``segqc keygen``: Ed25519 signatures for model folders (:mod:`segqc.integrity`)."""

from __future__ import annotations

from pathlib import Path

import click

from segqc.cli.options import command


@command("keygen")
@click.argument("key", type=click.Path(dir_okay=False, path_type=Path))
def keygen(key: Path) -> None:
    """Write a new Ed25519 key pair: KEY (private, mode 0600) and KEY.pub (public), both PEM.

    Keep KEY secret; give KEY.pub to whoever runs predict or serve with --trusted-key.

    \b
    Example:
        segqc keygen keys/segqc-signing
        segqc sign --key keys/segqc-signing model
        segqc predict --model model --trusted-key keys/segqc-signing.pub scans/ --out results
    """
    from segqc.integrity import generate_key

    private, public = generate_key(key)
    click.echo(f"wrote {private} (private: keep it secret) and {public} (public)")


@command("sign")
@click.option(
    "--key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Ed25519 private key (PEM), e.g. from `segqc keygen`.",
)
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def sign(key: Path, model_dir: Path) -> None:
    """Sign a model folder (a bundle or an ONNX export): write MODEL_DIR/signature.json.

    The signature covers the manifest (bundle.json or export.json), which holds the checksum of
    every weight or graph file: any later change to the folder breaks it. predict and serve with
    --trusted-key PUB refuse a model whose signature does not verify with PUB.
    """
    from segqc.integrity import sign_model

    out = sign_model(model_dir, key)
    click.echo(f"wrote {out}")
