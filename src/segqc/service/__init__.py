"""HTTP service (optional extra ``segqc[serve]``): ``create_app(model_dir)`` returns a FastAPI app."""

from segqc.service.app import create_app

__all__ = ["create_app"]
