"""Exceptions and warnings raised by segqc. The CLI maps errors to exit codes (and prints warnings as
one ``warning:`` line), the service maps errors to 4xx answers."""

from __future__ import annotations


class SegQCError(Exception):
    """Base class of every error segqc raises on purpose (bad input, bad settings, bad files)."""


class DataError(SegQCError, ValueError):
    """An image, mask, folder or protocol file cannot be used; the message names the file."""


class UnknownNameError(SegQCError, KeyError):
    """A registry lookup with a name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class NotFittedError(SegQCError, ValueError, AttributeError):
    """A predictor was used before ``fit``."""


class BundleError(SegQCError, ValueError):
    """A model file or bundle is missing, tampered with, or does not match its config."""


class SettingsError(SegQCError, ValueError):
    """A setting (of a method, predictor or generator) is unknown or out of range."""


class DeviceError(SegQCError, RuntimeError):
    """The device asked for (e.g. ``--device cuda``) is not there: the machine's fault, not the model's."""


class SegQCWarning(UserWarning):
    """Something a user should know that does not stop the work (e.g. images left out for lacking a mask)."""
