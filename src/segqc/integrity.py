"""Integrity of model folders: a checksum of the manifest itself, and optional Ed25519 signatures.

Every field of ``bundle.json`` / ``export.json`` that can change a decision is covered by
``manifest_sha256``: the SHA-256 of the manifest's canonical JSON (sorted keys, no spaces, without the
``manifest_sha256`` key). The manifest holds the SHA-256 of every weight or graph file, so the one
digest covers the whole model. A checksum catches damage and careless edits; someone who can write
the folder can also recompute it. Deployers who need to know *who* made a model sign the digest
(``segqc sign --key KEY MODEL_DIR``) and run ``predict``/``serve`` with ``--trusted-key PUB``: a
model whose ``signature.json`` does not verify against that key is refused.

Keys are Ed25519 in PEM (``segqc keygen KEY`` writes ``KEY`` and ``KEY.pub``; OpenSSL's
``genpkey -algorithm ed25519`` makes the same). Signing uses the ``cryptography`` package, imported
only here and only when a key is used.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from segqc.errors import BundleError, SegQCError
from segqc.utils import atomic_write, json_ready, write_json

DIGEST_KEY = "manifest_sha256"
SIGNATURE_FILE = "signature.json"
#: In the order :func:`segqc.runtime.load_model` looks for them: the one found first is the model.
MANIFESTS = ("export.json", "bundle.json")
_HINT = "signing needs the cryptography package: pip install 'segqc[sign]' (or cryptography)"


def canonical_json(config: dict[str, Any]) -> bytes:
    """The bytes the digest is taken of: sorted keys, no whitespace, ASCII, no NaN, no ``manifest_sha256``."""
    body = {k: v for k, v in config.items() if k != DIGEST_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text.encode()


def manifest_digest(config: dict[str, Any]) -> str:
    """SHA-256 (hex) of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(config)).hexdigest()


def seal(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as JSON values with its ``manifest_sha256`` set (a new dict).

    The digest is of exactly what a reader will parse back: NumPy values become plain numbers and
    NaN becomes null, as :func:`segqc.utils.write_json` writes them.
    """
    plain = json_ready({k: v for k, v in config.items() if k != DIGEST_KEY})
    return {**plain, DIGEST_KEY: manifest_digest(plain)}


def check_seal(config: dict[str, Any], file: Path) -> str:
    """The manifest's digest, or a ``BundleError`` when it is missing or does not match."""
    stored = config.get(DIGEST_KEY)
    if not isinstance(stored, str):
        raise BundleError(f"{file}: manifest has no '{DIGEST_KEY}'; write the model again with this segqc")
    try:
        actual = manifest_digest(config)
    except (TypeError, ValueError) as err:
        raise BundleError(f"{file}: manifest is not canonical JSON ({err})") from None
    if actual != stored:
        raise BundleError(
            f"{file}: manifest checksum mismatch (the file was changed after it was written); "
            "write the model again"
        )
    return stored


def manifest_file(model_dir: Path) -> Path:
    """The manifest of a model folder: ``export.json``, else ``bundle.json``, as ``load_model`` picks it
    (a signature must be checked on the manifest that is loaded, never on another one beside it)."""
    for name in MANIFESTS:
        if (model_dir / name).is_file():
            return model_dir / name
    raise BundleError(f"{model_dir}: not a segqc model (no {' or '.join(MANIFESTS)})")


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise SegQCError(_HINT) from None
    return serialization, ed25519


def _read_key(path: Path, private: bool) -> Any:
    serialization, ed25519 = _crypto()
    kind = "private" if private else "public"
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise SegQCError(f"{path}: cannot read the {kind} key ({err.strerror or err})") from None
    try:
        if private:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as err:
        raise SegQCError(f"{path}: not a PEM {kind} key ({err})") from None
    wanted = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, wanted):
        raise SegQCError(f"{path}: not an Ed25519 {kind} key")
    return key


def _public_bytes(public_key: Any) -> bytes:
    serialization, _ = _crypto()
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def generate_key(private_path: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: ``PATH`` (private, PEM, mode 0600) and ``PATH.pub`` (public, PEM).

    Refuses to overwrite an existing key.
    """
    serialization, ed25519 = _crypto()
    private_path = Path(private_path)
    public_path = private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise SegQCError(f"{path}: exists; refusing to overwrite a key")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    with atomic_write(public_path) as fh:
        fh.write(public_pem)
    return private_path, public_path


def sign_model(model_dir: str | Path, key_path: str | Path) -> Path:
    """Sign a model folder's manifest digest with an Ed25519 private key; write ``signature.json``.

    The manifest's own checksum is checked first, so only an intact manifest is signed.
    """
    folder = Path(model_dir)
    file = manifest_file(folder)
    config = read_json_object(file, "the manifest")
    digest = check_seal(config, file)
    key = _read_key(Path(key_path), private=True)
    signature = key.sign(canonical_json(config))
    out = folder / SIGNATURE_FILE
    write_json(
        out,
        {
            "algorithm": "ed25519",
            "manifest": file.name,
            DIGEST_KEY: digest,
            "public_key": base64.b64encode(_public_bytes(key.public_key())).decode(),
            "signature": base64.b64encode(signature).decode(),
        },
    )
    return out


def verify_signature(model_dir: str | Path, trusted_key: str | Path) -> str:
    """Check that the model folder's ``signature.json`` is a valid signature of its manifest by the
    trusted public key. Returns the manifest digest.

    Raises:
        BundleError: no signature, a damaged one, a signature by another key, or one of another manifest.
        SegQCError: the key file is unreadable or not an Ed25519 public key.
    """
    folder = Path(model_dir)
    key = _read_key(Path(trusted_key), private=False)
    file = manifest_file(folder)
    config = read_json_object(file, "the manifest")
    digest = check_seal(config, file)
    sig_file = folder / SIGNATURE_FILE
    if not sig_file.is_file():
        raise BundleError(f"{folder}: model is not signed ({SIGNATURE_FILE} not found); refusing it")
    record = read_json_object(sig_file, "the signature")
    if record.get("manifest", file.name) != file.name:
        raise BundleError(
            f"{sig_file}: signs {record.get('manifest')!r}, but the model here is {file.name}; refusing it"
        )
    try:
        signature = base64.b64decode(str(record["signature"]), validate=True)
    except (KeyError, ValueError) as err:
        raise BundleError(f"{sig_file}: unreadable signature ({err})") from None
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(signature, canonical_json(config))
    except InvalidSignature:
        raise BundleError(
            f"{folder}: signature does not verify with the trusted key {Path(trusted_key).name} "
            "(signed by another key, or the model changed after signing); refusing the model"
        ) from None
    return digest


def read_json_object(file: Path, kind: str) -> dict[str, Any]:
    """The JSON object in ``file``, or a one-line ``BundleError`` naming the file and ``kind`` (what it is:
    ``bundle config``, ``signature``, ...). Deep nesting and undecodable bytes are errors, not tracebacks."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise BundleError(f"{file}: cannot read {kind} ({err})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{file}: {kind} must be a JSON object")
    return data
