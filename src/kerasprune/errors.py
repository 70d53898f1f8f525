"""The kerasprune exception family.

Every error the library raises on bad input derives from `PruningError`, which
is itself a `ValueError`, so callers can catch one type.
"""

from __future__ import annotations


class PruningError(ValueError):
    """A request that cannot be carried out: bad selection, unprunable group, ..."""


class SelectionError(PruningError):
    """The selection names an unknown layer, bad indices or a bad mask."""


class UnsupportedLayerError(PruningError):
    """A layer blocks the channels that were asked to be removed."""


class ModelLoadError(PruningError):
    """A model file could not be read as a Keras model."""


class ModelSaveError(PruningError):
    """A model or report could not be written where asked (exists, is the input, bad name)."""


def describe(layer) -> str:
    """`'name' (ClassName)` for messages."""
    return f"'{getattr(layer, 'name', layer)}' ({type(layer).__name__})"
