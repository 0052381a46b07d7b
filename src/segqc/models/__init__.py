"""Models shipped inside the package, usable right after ``pip install segqc``.

Each shipped model is a folder ``segqc/models/<name>/`` holding a bundle written by ``segqc train``
(``bundle.json``, ``f.safetensors``, ``g.safetensors``) and ``card.json``, a short summary of its
model card. ``segqc predict --model <name>``, ``segqc serve --model <name>`` and ``segqc export
--model <name>`` take the name (see :func:`resolve_model`); ``segqc models`` lists them.

``card.json`` is one JSON object with these fields (strings unless said otherwise):

* ``name``: the model's name, the same as its folder's;
* ``title``: a few words;
* ``description``: one line: what the model does and how it was trained;
* ``intended_use``: what it is for (and not for);
* ``data``: the data it was trained and tested on;
* ``training``: the command that trained it;
* ``metrics``: object, metric name -> number: the headline test metrics (copied from the bundle's
  ``test_metrics``);
* ``limits``: list of strings, the known limits;
* ``card``: path of the full model card in the repository (e.g. ``docs/models/isic2017.md``).

Readers show whatever fields a card has, so a card with more or fewer fields still lists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segqc.errors import UnknownNameError
from segqc.integrity import read_json_object

__all__ = ["CARD_FIELDS", "MODELS_DIR", "model_card", "resolve_model", "shipped_models"]

#: The folder of the shipped models (inside the installed package).
MODELS_DIR = Path(__file__).resolve().parent
#: The fields of ``card.json``, in the order they are shown (see above).
CARD_FIELDS = (
    "name", "title", "description", "intended_use", "data", "training", "metrics", "limits", "card"
)  # fmt: skip
#: The manifests that make a folder a model folder: a bundle, or an ONNX export.
MANIFESTS = ("bundle.json", "export.json")


def _is_model_folder(path: Path) -> bool:
    return any((path / manifest).is_file() for manifest in MANIFESTS)


def shipped_models() -> dict[str, Path]:
    """The shipped models by name (sorted), each a folder holding a ``bundle.json``.

    Returns:
        Name -> folder inside the installed package.
    """
    if not MODELS_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(MODELS_DIR.iterdir()) if p.is_dir() and (p / "bundle.json").is_file()}


def model_card(name: str) -> dict[str, Any]:
    """The card (``card.json``) of shipped model ``name``; ``{"name": name}`` if it has none.

    Args:
        name: a shipped model's name (see :func:`shipped_models`).

    Raises:
        UnknownNameError: no shipped model has that name (the message lists those that exist).
        BundleError: its ``card.json`` cannot be read or is not a JSON object.
    """
    models = shipped_models()
    if name not in models:
        known = ", ".join(models) or "none"
        raise UnknownNameError(f"no shipped model named {name!r} (shipped: {known})")
    file = models[name] / "card.json"
    if not file.is_file():
        return {"name": name}
    return read_json_object(file, "the model card")


def resolve_model(value: str | Path) -> Path:
    """The model folder that ``--model value`` means.

    In order: an existing model folder (one holding ``bundle.json`` or ``export.json``) is used as
    given; else a bare name (no path separator) of a shipped model is that model's folder in the
    package, even if a folder of that name that is not a model (e.g. a data folder) exists here;
    else ``value`` as a path, which the loader then reports clearly if it is not a model.

    Args:
        value: a folder path or a shipped model's name.

    Returns:
        The folder to load.
    """
    path = Path(value)
    if _is_model_folder(path):
        return path
    name = str(value)
    if "/" not in name and "\\" not in name and name not in ("", ".", ".."):
        shipped = shipped_models().get(name)
        if shipped is not None:
            return shipped
    return path
