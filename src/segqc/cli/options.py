"""What the commands share: option groups, defaults read from the library, and one error convention.

Help texts and shown defaults that need the registries or the library's settings are computed when
help is printed (:class:`LibraryOption`), so building the CLI imports neither PyTorch nor the
plug-in registries (``segqc predict`` on an ONNX export never imports torch).

Errors: every command is a :class:`Command`, whose :func:`error_boundary` turns what a user can cause
into one line ``error: <message>`` on stderr and an exit code (see :mod:`segqc.cli`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from segqc.errors import SegQCError, SegQCWarning

#: Exit codes of every command (documented in :mod:`segqc.cli` and ``segqc --help``).
EXIT_OK = 0
EXIT_ERROR = 1  # an error segqc explains: bad data, bad model file, unwritable output, ...
EXIT_USAGE = 2  # bad usage: unknown option, bad value (click's own code)
EXIT_PARTIAL = 3  # ``segqc predict`` finished but some inputs could not be assessed
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)

DEVICES = ("auto", "cpu", "cuda")

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


# -- the error convention ------------------------------------------------------------------------


def fail(message: str, code: int = EXIT_ERROR) -> None:
    """Print ``error: <message>`` (one line) on stderr and exit with ``code``."""
    click.echo(f"error: {' '.join(str(message).split())}", err=True)
    sys.exit(code)


def describe_os_error(err: OSError) -> str:
    """``<file>: <reason>`` for an OS error (permission denied, disk full, not a folder, ...)."""
    reason = err.strerror or str(err) or type(err).__name__
    where = err.filename if err.filename is not None else ""
    if err.filename2 is not None:
        where = f"{where} -> {err.filename2}"
    return f"{where}: {reason}" if where else reason


@contextlib.contextmanager
def error_boundary() -> Iterator[None]:
    """Turn user errors into one line on stderr and the documented exit code; never a traceback.

    ``SegQCError`` and ``OSError``: 1; click's usage errors: 2 (other click errors: their own code);
    ``KeyboardInterrupt``: 130.
    """
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise  # click prints the help
    except click.UsageError as err:
        hint = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
        fail(err.format_message() + hint, err.exit_code)
    except click.ClickException as err:
        fail(err.format_message(), err.exit_code)
    except (SegQCError, SegQCWarning) as err:  # a warning raised under -W error stops as an error
        fail(str(err), EXIT_ERROR)
    except OSError as err:
        fail(describe_os_error(err), EXIT_ERROR)
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Print segqc's own warnings as one line ``warning: <message>`` on stderr, as errors are printed;
    other warnings keep Python's handling."""
    with warnings.catch_warnings():  # restores showwarning afterwards
        python_show = warnings.showwarning

        def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
            if issubclass(category, SegQCWarning):
                click.echo(f"warning: {' '.join(str(message).split())}", err=True)
            else:
                python_show(message, category, *args, **kwargs)

        warnings.showwarning = show
        yield


class _Boundary:
    """Parsing (``make_context``) and running (``invoke``) under :func:`error_boundary`."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with error_boundary():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        with error_boundary(), warnings_as_lines():
            return super().invoke(ctx)


class Command(_Boundary, click.Command):
    """A command under :func:`error_boundary`, while parsing its options and while running."""


class Group(_Boundary, click.Group):
    """A group of :class:`Command` (unknown sub-commands are one-line usage errors too)."""

    command_class = Command


Group.group_class = Group


def command(name: str, **kwargs: Any) -> Decorator:
    """``click.command`` with the error convention, help on ``-h`` as well as ``--help``."""
    kwargs.setdefault("context_settings", {"help_option_names": ["-h", "--help"]})
    return click.command(name, cls=Command, **kwargs)


# -- help texts and defaults computed when shown -------------------------------------------------


class LibraryOption(click.Option):
    """An option whose help text and shown default are computed only when help is printed.

    ``help_from``: returns the help text (e.g. built from a registry). ``default_from``: returns the
    library's default, shown as ``[default: ...]`` while the option itself defaults to ``None`` so an
    unset flag keeps the library's setting.
    """

    def __init__(
        self,
        *args: Any,
        help_from: Callable[[], str] | None = None,
        default_from: Callable[[], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.help_from = help_from
        self.default_from = default_from

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        if self.help_from is not None:
            self.help = self.help_from()
        if self.default_from is None:
            return super().get_help_record(ctx)
        saved = self.default, self.show_default
        self.default, self.show_default = self.default_from(), True
        try:
            return super().get_help_record(ctx)
        finally:
            self.default, self.show_default = saved


def option(*decls: str, **kwargs: Any) -> Decorator:
    return click.option(*decls, cls=LibraryOption, **kwargs)


def _shown(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "none"
    return value


def config_default(name: str, config: str = "segqc.config:PipelineConfig") -> Callable[[], Any]:
    """The default of field ``name`` of a settings dataclass (``module:Class``), read when shown."""

    def read() -> Any:
        module, cls_name = config.split(":")
        cls = getattr(importlib.import_module(module), cls_name)
        (field,) = [f for f in dataclasses.fields(cls) if f.name == name]
        if field.default_factory is not dataclasses.MISSING:
            return _shown(field.default_factory())
        return _shown(field.default)

    return read


EXPERIMENT_CONFIG = "segqc.experiment.run:ExperimentConfig"


def signature_default(function: str, name: str) -> Callable[[], Any]:
    """The default of parameter ``name`` of ``module:function``, read when shown."""

    def read() -> Any:
        module, func_name = function.split(":")
        return _shown(
            inspect.signature(getattr(importlib.import_module(module), func_name)).parameters[name].default
        )

    return read


def registry_names(kind: str, *, baselines: bool = False) -> str:
    """Comma-separated names registered in ``kind`` (``methods`` or ``predictors``)."""
    if kind == "methods":
        from segqc.uncertainty import METHODS

        return ", ".join(METHODS.names())
    from segqc.quality import PREDICTORS

    names = PREDICTORS.names()
    if baselines:
        names = [n for n in names if not PREDICTORS.get(n).uses_uncertainty]
    return ", ".join(names)


def apply(*decorators: Decorator) -> Decorator:
    """One decorator applying ``decorators`` in the order they are listed (the first one on top)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return deco


# -- option groups -------------------------------------------------------------------------------


def _check_writable(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Refuse an output folder that cannot be created or written, before any work is done."""
    if value is None:
        return value
    probe = Path(value).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise SegQCError(f"{value}: cannot create the folder: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise SegQCError(f"{value}: cannot write there: {probe} is not writable")
    return value


def out_option(help: str, *, name: str = "--out", default: Path | None = None) -> Decorator:
    """The output folder: required unless ``default``; checked to be writable before any work."""
    extra: dict[str, Any] = (
        {"required": True} if default is None else {"default": default, "show_default": True}
    )
    return click.option(
        name,
        type=click.Path(file_okay=False, path_type=Path),
        callback=_check_writable,
        help=help,
        **extra,
    )


SHIPPED_HELP = "or the name of a shipped model (segqc models)"


class ModelPath(click.Path):
    """A model folder, or the name of a shipped model (:func:`segqc.models.resolve_model`)."""

    name = "model"

    def __init__(self, *, exists: bool = True) -> None:
        super().__init__(exists=exists, file_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from segqc.models import resolve_model, shipped_models

        resolved = resolve_model(value)
        shipped = shipped_models().get(str(value))
        if shipped is not None and resolved != shipped:
            # a folder here takes a shipped model's name: say so, so that a planted or forgotten
            # folder cannot silently stand in for the model the user meant
            click.echo(
                f"warning: --model {value} is the folder {resolved.resolve()}, not the shipped model "
                f"{value} (pass the shipped one from another working directory, or rename the folder)",
                err=True,
            )
        if self.exists and not resolved.exists():
            known = ", ".join(shipped_models()) or "none"
            self.fail(f"{value}: no such model folder, and no shipped model of that name (shipped: {known})")
        return super().convert(resolved, param, ctx)


def model_option(help: str, *, dest: str = "model", exists: bool = True) -> Decorator:
    """``--model``: a model folder or a shipped model's name (``help`` gets the latter appended)."""
    return click.option(
        "--model",
        dest,
        type=ModelPath(exists=exists),
        metavar="MODEL",
        required=True,
        help=f"{help.rstrip('.')}, {SHIPPED_HELP}.",
    )


def trusted_key_option(use: str) -> Decorator:
    """``--trusted-key PUB`` of the commands that load a model (``use``: what they do with it)."""
    return click.option(
        "--trusted-key",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help=f"Ed25519 public key (PEM): {use} the model only if it carries a valid signature by this key "
        "(`segqc sign`).",
    )


def warn_if_unfit(model: Any) -> None:
    """The warning ``predict`` and ``serve`` print on every start for a model written unfit (``--force``)."""
    from segqc.gate import unfit_warning

    warning = unfit_warning(model)
    if warning:
        click.echo(f"warning: {warning}", err=True)


PROTOCOL_HELP = (
    "JSON file with a 'train' id list and a 'test' one (e.g. split.json); default: a seeded 80/20 "
    "train/test split of --data."
)


def data_options(protocol_help: str = PROTOCOL_HELP) -> Decorator:
    """``--data`` (a data folder, default the embedded synthetic set) and ``--protocol``."""
    return apply(
        click.option(
            "--data",
            type=click.Path(exists=True, file_okay=False, path_type=Path),
            default=None,
            help="Data folder (ISIC 2017 or images/ + masks/); default: the embedded synthetic set.",
        ),
        click.option(
            "--protocol",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=None,
            help=protocol_help,
        ),
    )


def synthetic_size_options(config: str | None = None) -> Decorator:
    """``--n-train`` and ``--n-test``: sizes of the embedded synthetic set (ignored with --data); defaults
    shown from the settings dataclass ``config``, else from :func:`segqc.demo.run_demo`."""

    def size(name: str, low: int, help: str) -> Decorator:
        read = config_default(name, config) if config else signature_default("segqc.demo:run_demo", name)
        flag = "--" + name.replace("_", "-")
        return option(flag, type=click.IntRange(min=low), default=None, help=help, default_from=read)

    return apply(
        size("n_train", 2, "Synthetic training images."), size("n_test", 1, "Synthetic test images.")
    )


def device_option(default_from: Callable[[], Any]) -> Decorator:
    return option(
        "--device",
        type=click.Choice(DEVICES),
        default=None,
        help="Where to run the networks.",
        default_from=default_from,
    )


def quiet_option() -> Decorator:
    return click.option("--quiet", is_flag=True, help="No progress bars.")


def method_option() -> Decorator:
    return option(
        "--method",
        default=None,
        help_from=lambda: f"Uncertainty method of f: {registry_names('methods')}.",
        default_from=config_default("method"),
    )


def training_options(config: str = "segqc.config:PipelineConfig", seed_help: str | None = None) -> Decorator:
    """Settings of the commands that train; an unset flag keeps the library's default (shown)."""

    def setting(name: str, help: str, low: int = 1) -> Decorator:
        flag = "--" + name.replace("_", "-")
        return option(
            flag,
            type=click.IntRange(min=low),
            default=None,
            help=help,
            default_from=config_default(name, config),
        )

    seed = (
        click.option("--seed", type=click.IntRange(min=0), default=None, help=seed_help)
        if seed_help
        else setting("seed", "Seed of everything.", low=0)
    )
    return apply(
        setting("image_size", "Side of the square images (a multiple of 16)."),
        setting("seg_epochs", "Epochs for f."),
        setting("quality_epochs", "Epochs for g."),
        setting("base_width", "U-Net width."),
        option(
            "--seg-lr-schedule",
            type=click.Choice(["constant", "cosine"]),
            default=None,
            help="Learning rate of f over its training: constant (the paper's) or cosine (annealed to 0).",
            default_from=config_default("seg_lr_schedule", config),
        ),
        seed,
        device_option(config_default("device", config)),
        quiet_option(),
    )


def _parse_method_params(qualified: bool) -> Callable[..., dict[str, Any]]:
    form = "METHOD.KEY=VALUE" if qualified else "KEY=VALUE"

    def parse(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for item in values:
            key, sep, raw = item.partition("=")
            key = key.strip()
            parts = key.split(".")
            if not sep or not key or (qualified and (len(parts) != 2 or not all(parts))):
                raise click.BadParameter(f"expected {form}, got {item!r}", ctx=ctx, param=param)
            try:
                value = json.loads(raw)
            except ValueError:
                value = raw
            if qualified:
                params.setdefault(parts[0], {})[parts[1]] = value
            else:
                params[key] = value
        return params

    return parse


def method_param_option(qualified: bool = False) -> Decorator:
    """``--method-param KEY=VALUE`` (``METHOD.KEY=VALUE`` if ``qualified``), repeatable; VALUE is JSON when
    it parses (numbers, true/false, null), else a string."""
    if qualified:
        text = "Setting of an uncertainty method, e.g. mcdropout.samples=30; repeatable."
    else:
        text = "Setting of the uncertainty method, e.g. samples=30 for mcdropout; repeatable."
    return click.option(
        "--method-param",
        "method_params",
        multiple=True,
        metavar="METHOD.KEY=VALUE" if qualified else "KEY=VALUE",
        callback=_parse_method_params(qualified),
        help=text + " VALUE is read as JSON when it parses (numbers, true/false, null), else as a string.",
    )


def check_method(name: str, params: dict[str, Any]) -> None:
    """Build method ``name`` with ``params`` once, so a bad name or setting fails before any work.

    Raises:
        UnknownNameError: ``name`` is not registered.
        SettingsError: a setting the method does not take.
    """
    from segqc.uncertainty import METHODS

    METHODS.create(name, **params)
