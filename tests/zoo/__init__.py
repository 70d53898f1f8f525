"""The unseen-model zoo: small versions of Keras 3 models that other people wrote.

Importing `zoo` registers every builder (see `zoo.registry`) and the custom layers of the
examples (as Keras serializables, package ``zoo``), and imports Keras only: a fresh process
that reloads a saved zoo model imports `zoo`, never kerasprune. `zoo.check` (which imports
kerasprune) runs one model through the library.

One module per task family: `vision` (image classification), `segmentation`, `detection`,
`generative`, `timeseries`, `audio`, `text`, `volumetric` (3-D), `siamese`, `ocr`, `custom`
(keras.ops in the Functional API, subclassed models, composite layers).
"""

from zoo import (  # noqa: F401  (registers)
    audio,
    custom,
    detection,
    generative,
    ocr,
    segmentation,
    siamese,
    text,
    timeseries,
    vision,
    volumetric,
)
from zoo.registry import FAMILIES, REGISTRY, ZooModel, example

__all__ = ["FAMILIES", "REGISTRY", "ZooModel", "example", "models"]


def models(family: str | None = None) -> list[ZooModel]:
    """Every zoo model (of `family`), in family order."""
    order = {f: i for i, f in enumerate(FAMILIES)}
    found = [m for m in REGISTRY.values() if family is None or m.family == family]
    return sorted(found, key=lambda m: order[m.family])
