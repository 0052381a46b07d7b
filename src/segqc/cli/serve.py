"""``segqc serve``: the HTTP service over a model folder (needs the optional extra ``segqc[serve]``)."""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from typing import Any

import click

from segqc.cli.options import command, model_option, trusted_key_option, warn_if_unfit
from segqc.errors import SegQCError

MiB = 1024 * 1024
SECONDS = click.FloatRange(0.0, min_open=True)


def _import_server():  # -> (uvicorn module, create_app)
    """Import the web stack only when serving, so the rest of the CLI works without it."""
    missing = [
        pkg
        for pkg, modules in (
            ("fastapi", ("fastapi",)),
            ("uvicorn", ("uvicorn",)),
            ("python-multipart", ("python_multipart", "multipart")),
        )
        if not any(_installed(m) for m in modules)
    ]
    if missing:
        raise SegQCError(
            f"segqc serve needs the optional web packages ({', '.join(missing)} missing); "
            "install them with: pip install 'segqc[serve]'"
        )
    import uvicorn

    from segqc.service.app import create_app

    return uvicorn, create_app


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules, or a broken package
        return False


def free_port_to_listen(host: str, port: int) -> int:
    """``port`` on ``host``, checked free by binding it as uvicorn will; ``0`` becomes a free port.

    So a taken port or an unknown host is one clear error before the model loads (uvicorn would log
    it and exit with its own status 3), and the start-up line can name the port of ``--port 0``.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn chooses
    try:  # creating the socket fails too, e.g. an IPv6 address on a machine without IPv6
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            return sock.getsockname()[1]
    except OSError as e:
        raise SegQCError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def run_uvicorn(uvicorn: Any, app: Any, **kwargs: Any) -> None:
    """``uvicorn.run``, with its start-up failure (e.g. the port taken since it was checked) as one
    error line and exit code 1 instead of uvicorn's status 3 (segqc's code for inputs that could not
    be assessed)."""
    try:
        uvicorn.run(app, **kwargs)
    except SystemExit as e:
        if e.code in (None, 0):
            raise
        raise SegQCError(
            f"the server did not start (uvicorn exited with status {e.code}; see its log above)"
        ) from None


def shown(flag: str, type: Any, default: Any, help: str) -> Any:
    """An option with its default shown in the help."""
    return click.option(flag, type=type, default=default, show_default=True, help=help)


@command("serve")
@model_option(
    "Model folder (a bundle written by `segqc train`, or its ONNX export from `segqc export`).",
    dest="model_dir",
    exists=False,
)
@shown("--host", str, "127.0.0.1", "Address to listen on.")
@shown("--port", click.IntRange(0, 65535), 8000, "0: a free one, named in the start-up line.")
@shown("--max-upload-mb", click.FloatRange(0.0, min_open=True), 20.0, "Largest accepted upload (413 above).")
@shown(
    "--max-pixels",
    click.IntRange(1),
    40_000_000,
    "Largest accepted width x height, checked before decoding (413 above).",
)
@shown(
    "--pixel-budget",
    click.IntRange(1),
    80_000_000,
    "Most decoded pixels in flight across concurrent requests, per server process (up to about 40 "
    "bytes of memory each while processed); an image that does not fit waits, then gets 503.",
)
@shown("--queue-timeout", SECONDS, 15.0, "Longest wait for the pixel budget, s (then 503).")
@shown("--read-timeout", SECONDS, 15.0, "Longest pause in an upload, s (then 408).")
@shown("--upload-timeout", SECONDS, 120.0, "Longest time for a whole upload, s (then 408).")
@click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File holding an API key: every route but /healthz then needs 'Authorization: Bearer KEY' or "
    "'X-API-Key: KEY' (401). Default: $SEGQC_API_KEY if set, else no key.",
)
@click.option(
    "--audit-log",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Append one JSON line per assessment and per refused upload to this file.",
)
@trusted_key_option("serve")
@shown(
    "--workers",
    click.IntRange(1),
    1,
    "Server processes, each with its own copy of the model and its own pixel budget. Within a process, "
    "requests run in parallel threads but the model runs one request at a time.",
)
@shown(
    "--log-level",
    click.Choice(["critical", "error", "warning", "info", "debug"]),
    "info",
    "warning hides the per-request access log.",
)
def serve(
    model_dir: Path,
    host: str,
    port: int,
    max_upload_mb: float,
    max_pixels: int,
    pixel_budget: int,
    queue_timeout: float,
    read_timeout: float,
    upload_timeout: float,
    api_key_file: Path | None,
    audit_log: Path | None,
    trusted_key: Path | None,
    workers: int,
    log_level: str,
) -> None:
    """Serve a model over HTTP: POST /v1/assess, GET /v1/model, GET /healthz, docs at /docs.

    \b
    Example:
        segqc serve --model model --port 8000
        segqc serve --model isic2017
        curl -F file=@lesion.jpg http://127.0.0.1:8000/v1/assess
    """
    uvicorn, create_app = _import_server()
    from segqc.service.budget import return_freed_memory
    from segqc.service.middleware import read_api_key

    port = free_port_to_listen(host, port)
    max_upload_bytes = int(max_upload_mb * MiB)
    api_key = read_api_key(api_key_file)  # a file that is empty or unreadable stops here, with one line
    settings = {
        "max_upload_bytes": max_upload_bytes,
        "max_pixels": max_pixels,
        "pixel_budget": pixel_budget,
        "queue_timeout": queue_timeout,
        "read_timeout": read_timeout,
        "upload_timeout": upload_timeout,
        "audit_log": audit_log,
        "trusted_key": trusted_key,
    }
    return_freed_memory()  # so that the peak RSS follows the pixel budget (see its doc)
    # Load (and warm up) the model here, so a bad one is a clear error and exit code 1, even with workers.
    app = create_app(model_dir, api_key=api_key, **settings)
    model = app.state.model
    warn_if_unfit(model)
    shown = f"[{host}]" if ":" in host else host
    docs = "API docs at /docs" if app.state.docs else "no /docs: pip install fastapi-offline"
    click.echo(
        f"segqc serve: model {model_dir} ({model.backend}, {model.method}, threshold {model.threshold:g}) on "
        f"http://{shown}:{port} ({docs}); API key {'required' if api_key else 'off'}"
        + (f", audit log {audit_log}" if audit_log else ""),
        err=True,
    )
    common = {"host": host, "port": port, "log_level": log_level, "server_header": False}
    if workers == 1:
        run_uvicorn(uvicorn, app, **common)
        return
    # Several processes: uvicorn imports the app factory in each, which reads these settings.
    from segqc.service.app import ENV_SETTINGS

    os.environ["SEGQC_SERVE_MODEL"] = str(Path(model_dir).resolve())
    for key, (var, _) in ENV_SETTINGS.items():
        value = settings[key]
        is_path = key in ("audit_log", "trusted_key")
        os.environ[var] = "" if value is None else str(Path(value).resolve() if is_path else value)
    # The key travels as its file's path (or stays in $SEGQC_API_KEY), not as a new variable.
    os.environ["SEGQC_API_KEY_FILE"] = str(api_key_file.resolve()) if api_key_file else ""
    del app
    run_uvicorn(uvicorn, "segqc.service.app:create_app_from_env", factory=True, workers=workers, **common)
