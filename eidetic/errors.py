"""Exceptions raised by eidetic.

Every error names the module, argument or task at fault and says what to do about it.
"""

from __future__ import annotations


class EideticError(Exception):
    """Base class of every error eidetic raises on purpose."""


class UnsupportedLayerError(EideticError, TypeError):
    """A module of the network cannot be given per-unit ownership (raised at set-up)."""


class GraphError(EideticError, RuntimeError):
    """The unit graph could not be discovered, or the validator found it wrong."""


class TaskError(EideticError, ValueError):
    """A ``train_task`` call was given an impossible task, data or configuration."""


class NonFiniteLossError(EideticError, FloatingPointError):
    """The loss became NaN or infinite; the network was rolled back."""


class CheckpointError(EideticError, RuntimeError):
    """A state dict does not fit this network."""
