"""keras_hub backbones and task models, built small from constructor arguments (the `hub` extra).

keras_hub writes MobileNetV3's inverted residual blocks, EfficientNetV2's
MBConv/FusedMBConv, HGNetV2's layers and DeepLabV3's ASPP as composite layers;
kerasprune traces them (kerasprune.tracing). Nothing is downloaded: no presets.
"""

import keras
import numpy as np
import pytest

pytest.importorskip("keras_hub", reason="keras_hub tests need the `hub` extra: pip install kerasprune[hub]")

import hub_models  # noqa: E402
import kerasprune as kp  # noqa: E402
from kerasprune.plan import Plan  # noqa: E402
from kerasprune.testing import predict, randomize_batchnorm  # noqa: E402


def quarter_plan(graph, seed=0) -> Plan:
    """A seeded random 25% of every prunable exact group."""
    rng = np.random.default_rng(seed)
    removed = {}
    for g in graph.prunable_groups:
        n = min(max(int(round(g.size * 0.25)), 1), g.size - 1)
        if g.exact and n > 0:
            removed[g.id] = np.sort(rng.choice(g.size, size=n, replace=False))
    return Plan.from_groups(graph, removed)


def removal_equals_masking(model, size, plan):
    """`remove_filters` == `mask_filters` (applied to `model` itself, last); returns the pruned model."""
    x = np.random.default_rng(1).normal(size=(2, size, size, 3)).astype("float32")
    pruned = kp.remove_filters(model, plan)
    got = predict(pruned, x)
    before = predict(model, x)
    kp.mask_filters(model, plan)
    masked = predict(model, x)
    scale = max(1.0, max(float(np.abs(m).max()) for m in masked))
    assert max(float(np.abs(a - b).max()) for a, b in zip(got, masked)) / scale < 1e-4
    assert max(float(np.abs(a - b).max()) for a, b in zip(before, masked)) > 1e-6  # not a no-op
    assert pruned.count_params() < model.count_params()
    return pruned, x, got


def reloads(pruned, x, expected, tmp_path):
    path = tmp_path / "pruned.keras"
    pruned.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(predict(loaded, x), expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    return loaded


@pytest.mark.parametrize("name", ["MobileNetV3", "EfficientNetV2", "HGNetV2"])
def test_backbones_with_composite_blocks_are_traced_and_pruned(name, tmp_path):
    model, size = hub_models.BUILDERS[name][1]()
    randomize_batchnorm(model, seed=2)
    graph = kp.analyze(model)
    assert graph.traced, "keras_hub's composite blocks should be traced"
    inside = [g for g in graph.prunable_groups if any(k.split("/")[0] in graph.traced for k in g.members)]
    assert inside, "groups through traced blocks should be prunable"
    pruned, x, got = removal_equals_masking(model, size, quarter_plan(graph))
    reloads(pruned, x, got, tmp_path)


def test_deeplabv3_segmenter_is_pruned_whole_and_reloads(tmp_path):
    """ASPP (`SpatialPyramidPooling`) is traced; the pruned segmenter saves and reloads.

    keras_hub's `SpatialPyramidPooling` cannot be reloaded as a plain layer (its
    `build` adds a tuple to the list shape JSON gives back), so it is replaced by its
    traced graph even where the plan leaves it untouched.
    """
    model, size = hub_models.deeplabv3_segmenter()
    randomize_batchnorm(model, seed=3)
    graph = kp.analyze(model)
    assert any(key.endswith("spatial_pyramid_pooling") for key in graph.traced)
    pruned, x, got = removal_equals_masking(model, size, quarter_plan(graph, seed=1))
    reloads(pruned, x, got, tmp_path)


def test_pruned_backbone_keeps_working_in_its_classifier(tmp_path):
    backbone, size = hub_models.resnet()
    randomize_batchnorm(backbone, seed=4)
    graph = kp.analyze(backbone)
    pruned = kp.remove_filters(backbone, quarter_plan(graph, seed=2))
    assert pruned.count_params() < backbone.count_params()
    classifier, _ = hub_models.resnet_classifier(backbone=pruned)
    x = np.random.default_rng(5).normal(size=(2, size, size, 3)).astype("float32")
    y = predict(classifier, x)
    loaded = reloads(classifier, x, y, tmp_path)
    assert type(loaded).__name__ == "ResNetImageClassifier"
