"""Rules for the custom layers defined inside `keras.applications`.

- ConvNeXt's `LayerScale` (per-channel `gamma`) and `StochasticDepth`.
- InceptionResNetV2's `CustomScaleLayer` (`x[0] + x[1] * scale`).
"""

from __future__ import annotations

from kerasprune._keras import application_class
from kerasprune.rules.merging import CouplerRule
from kerasprune.rules.normalization import ChannelParams
from kerasprune.rules.registry import register_rule
from kerasprune.rules.reshaping import Elementwise

LayerScale = application_class("convnext", "LayerScale")
StochasticDepth = application_class("convnext", "StochasticDepth")
CustomScaleLayer = application_class("inception_resnet_v2", "CustomScaleLayer")

if LayerScale is not None:
    register_rule(LayerScale, ChannelParams(("gamma",), config_key="projection_dim"))
if StochasticDepth is not None:
    register_rule(StochasticDepth, Elementwise())
if CustomScaleLayer is not None:
    register_rule(CustomScaleLayer, CouplerRule())
