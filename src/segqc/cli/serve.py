"""``segqc serve``: the HTTP service over a model folder (needs the optional extra ``segqc[serve]``)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import click

from segqc.cli.options import command, model_option
from segqc.errors import SegQCError

MiB = 1024 * 1024


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


def shown(flag: str, type: Any, default: Any, help: str) -> Any:
    """An option with its default shown in the help."""
    return click.option(flag, type=type, default=default, show_default=True, help=help)


@command("serve")
@model_option("Model folder (a bundle written by `segqc train`).", dest="model_dir", exists=False)
@shown("--host", str, "127.0.0.1", "Address to listen on.")
@shown("--port", click.IntRange(0, 65535), 8000, "0: a free port.")
@shown("--max-upload-mb", click.FloatRange(0.0, min_open=True), 20.0, "Largest accepted upload (413 above).")
@shown(
    "--max-pixels",
    click.IntRange(1),
    40_000_000,
    "Largest accepted width x height, checked before decoding (413 above).",
)
@shown(
    "--workers",
    click.IntRange(1),
    1,
    "Server processes, each with its own copy of the model. Within a process, requests run in "
    "parallel threads but the model runs one request at a time.",
)
@shown(
    "--log-level",
    click.Choice(["critical", "error", "warning", "info", "debug"]),
    "info",
    "warning hides the per-request access log.",
)
def serve(
    model_dir: Path, host: str, port: int, max_upload_mb: float, max_pixels: int, workers: int, log_level: str
) -> None:
    """Serve a model over HTTP: POST /v1/assess, GET /v1/model, GET /healthz, docs at /docs.

    \b
    Example:
        segqc serve --model model --port 8000
        curl -F file=@lesion.jpg http://127.0.0.1:8000/v1/assess
    """
    uvicorn, create_app = _import_server()
    max_upload_bytes = int(max_upload_mb * MiB)
    # Load (and warm up) the model here, so a bad one is a clear error and exit code 1, even with workers.
    app = create_app(model_dir, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels)
    model = app.state.model
    shown = f"[{host}]" if ":" in host else host
    click.echo(
        f"segqc serve: model {model_dir} ({model.backend}, {model.method}, threshold {model.threshold:g}) on "
        f"http://{shown}:{port} (API docs at /docs)",
        err=True,
    )
    common = {"host": host, "port": port, "log_level": log_level, "server_header": False}
    if workers == 1:
        uvicorn.run(app, **common)
        return
    # Several processes: uvicorn imports the app factory in each, which reads these settings.
    os.environ.update(
        SEGQC_SERVE_MODEL=str(Path(model_dir).resolve()),
        SEGQC_SERVE_MAX_UPLOAD_BYTES=str(max_upload_bytes),
        SEGQC_SERVE_MAX_PIXELS=str(max_pixels),
    )
    del app
    uvicorn.run("segqc.service.app:create_app_from_env", factory=True, workers=workers, **common)
