"""``/docs`` without a CDN: Swagger UI's JavaScript and CSS served by the service itself.

FastAPI's built-in ``/docs`` page loads Swagger UI from a public CDN, which a hospital network without
internet access cannot reach (a blank page). Here the files come from the ``fastapi-offline`` package
(part of the ``serve`` extra; it ships Swagger UI 5, which reads the OpenAPI 3.1 schemas FastAPI
writes: ``swagger-ui-bundle``'s Swagger UI 4 cannot), mounted at ``/docs/static``. Swagger UI's online
spec validator is off, so the page contacts nothing but this server. ReDoc is not served.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_PATH = "/docs"
STATIC_PATH = "/docs/static"


def swagger_ui_dir() -> Path | None:
    """The folder of Swagger UI's files from ``fastapi-offline``, or None when it is not installed."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    folder = Path(fastapi_offline.__file__).parent / "static"
    files = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")
    return folder if all((folder / name).is_file() for name in files) else None


def add_local_docs(app: FastAPI) -> bool:
    """Serve ``/docs`` from local files; returns False (and serves no ``/docs``) without the package.

    ``app`` must be built with ``docs_url=None, redoc_url=None``.
    """
    folder = swagger_ui_dir()
    if folder is None:
        return False
    app.mount(STATIC_PATH, StaticFiles(directory=folder), name="swagger-ui")
    title = f"{app.title} - API docs"

    @app.get(DOCS_PATH, include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=title,
            swagger_js_url=f"{root}{STATIC_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_PATH}/favicon.png",
            oauth2_redirect_url=None,
            swagger_ui_parameters={"validatorUrl": None},  # the default validator is an online service
        )

    return True
