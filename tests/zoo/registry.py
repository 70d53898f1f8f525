"""The zoo's registry: one `ZooModel` per example model, filled by the `@example` decorator.

The zoo holds small versions of Keras 3 models that other people wrote for ordinary tasks
(mostly keras.io examples). Each builder keeps the structure of the example it follows (its
layers, `keras.ops` calls, custom layers and wiring) and shrinks only widths, depths and
input sizes. Builders take no arguments, download nothing (`weights=None`) and return a built
model with random weights.

This module imports Keras only, never kerasprune: a child process reloads saved zoo models
(whose custom layers are registered by importing `zoo`) without kerasprune.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: Families in the order the reports list them.
FAMILIES = (
    "image classification",
    "segmentation",
    "detection",
    "generation",
    "time series",
    "audio",
    "text",
    "3-D",
    "siamese",
    "OCR",
    "keras.ops / subclassed",
)


@dataclass(frozen=True)
class ZooModel:
    """One zoo entry.

    Attributes:
        name: The builder's name (unique).
        family: Task family, one of `FAMILIES`.
        follows: Title of the example the builder follows.
        url: Where that example lives.
        build: `() -> keras.Model`, a new model with random weights.
        sample: Optional `(model, batch, seed) -> inputs` for models whose inputs
            `kerasprune.testing.random_input` cannot make (dynamic lengths, label ids).
        notes: What was changed beyond sizes, and why.
    """

    name: str
    family: str
    follows: str
    url: str
    build: Callable
    sample: Callable | None = None
    notes: str = ""


REGISTRY: dict[str, ZooModel] = {}


def example(family: str, follows: str, url: str, *, sample: Callable | None = None, notes: str = ""):
    """Register the decorated builder as a zoo model following `follows` (at `url`)."""
    if family not in FAMILIES:
        raise ValueError(f"Unknown zoo family {family!r}; expected one of {FAMILIES}")

    def decorator(fn: Callable) -> Callable:
        if fn.__name__ in REGISTRY:
            raise ValueError(f"Zoo model {fn.__name__!r} is registered twice")
        REGISTRY[fn.__name__] = ZooModel(fn.__name__, family, follows, url, fn, sample, notes)
        return fn

    return decorator


KERAS_IO = "https://keras.io/examples/"
