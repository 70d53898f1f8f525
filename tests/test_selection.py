"""select(): ratio/count/threshold/targets, local and global, constraints, Selection I/O."""

import json

import keras
import numpy as np
import pytest
from keras import layers as L

import kerasprune as kp
from conftest import assert_removal_equals_masking
from kerasprune.errors import PruningError, SelectionError
from kerasprune.testing import randomize_batchnorm, randomize_weights


def _classic():
    """Sequential CNN with one producer per group (the classic threshold recipe's setting)."""
    m = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.Conv2D(16, 3, padding="same", name="c1"),
            L.ReLU(),
            L.Conv2D(24, 3, name="c2"),
            L.BatchNormalization(name="bn2"),
            L.ReLU(),
            L.Conv2D(32, 3, strides=2, name="c3"),
            L.Flatten(),
            L.Dense(40, activation="relu", name="d1"),
            L.Dense(3, name="out"),
        ]
    )
    randomize_weights(m, 0)
    randomize_batchnorm(m, 1)
    return m


def _residual():
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(16, 3, padding="same", name="stem")(i)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU()(x)
    for b in range(2):
        y = L.Conv2D(8, 1, name=f"b{b}_a")(x)
        y = L.BatchNormalization(name=f"b{b}_bn")(y)
        y = L.ReLU()(y)
        y = L.Conv2D(16, 3, padding="same", name=f"b{b}_b")(y)
        x = L.ReLU()(L.Add()([x, y]))
    x = L.Conv2D(12, 3, strides=2, name="tail")(x)
    o = L.Dense(4, name="head")(L.GlobalAveragePooling2D()(x))
    m = keras.Model(i, o)
    randomize_weights(m, 2)
    randomize_batchnorm(m, 3)
    return m


def _kept(model, name):
    return model.get_layer(name).kernel.shape[-1]


def test_threshold_mean_reproduces_classic_recipe():
    m = _classic()
    sel = kp.select(m, "mean", threshold=0.0)
    expected = {}
    for name in ("c1", "c2", "c3", "d1"):
        w = m.get_layer(name).kernel.numpy()
        means = w.mean(axis=tuple(range(w.ndim - 1)))
        expected[name] = tuple(np.flatnonzero(means < 0.0).tolist())
        assert 0 < len(expected[name]) < w.shape[-1]
    assert dict(sel) == expected


@pytest.mark.backend
def test_local_ratio_removes_lowest_l1_per_group():
    m = _classic()
    sel = kp.select(m, "l1", ratio=0.25)
    for name, n in (("c1", 16), ("c2", 24), ("c3", 32), ("d1", 40)):
        w = m.get_layer(name).kernel.numpy()
        l1 = np.abs(w).sum(axis=tuple(range(w.ndim - 1)))
        assert sel[name] == tuple(sorted(np.argsort(l1)[: n // 4].tolist()))
    pruned = kp.remove_filters(m, sel)
    assert [_kept(pruned, n) for n in ("c1", "c2", "c3", "d1")] == [12, 18, 24, 30]


def test_count_and_global_scope():
    m = _classic()
    sel = kp.select(m, "l1", count=3)
    assert {k: len(v) for k, v in sel.items()} == {"c1": 3, "c2": 3, "c3": 3, "d1": 3}
    glob = kp.select(m, "l2", count=20, scope="global")
    assert sum(len(v) for v in glob.values()) == 20
    # global = the 20 lowest scores after dividing each group's scores by their mean
    g = kp.analyze(m)
    scores = kp.score(m, "l2", graph=g)
    allv = sorted((s / np.abs(s).mean())[c] for s in scores.values() for c in range(len(s)))
    cut = allv[19]
    for name, idx in glob.items():
        s = scores[g.group_of(name).id]
        norm = s / np.abs(s).mean()
        assert set(np.flatnonzero(norm <= cut).tolist()) == set(idx)
    ratio = kp.select(m, "l2", ratio=0.5, scope="global")
    assert sum(len(v) for v in ratio.values()) == (16 + 24 + 32 + 40) // 2


def test_round_to_and_min_keep():
    m = _classic()
    sel = kp.select(m, "l1", ratio=0.5, round_to=8)
    pruned = kp.remove_filters(m, sel)
    kept = [_kept(pruned, n) for n in ("c1", "c2", "c3", "d1")]
    # 16, 24, 32, 40 channels: keep half, rounded up to a multiple of 8
    assert kept == [8, 16, 16, 24] and all(k % 8 == 0 for k in kept)
    sel = kp.select(m, "l1", ratio=0.95, min_keep=10)
    assert {c.layers[0]: c.kept for c in sel.groups} == {"c1": 10, "c2": 10, "c3": 10, "d1": 10}
    sel = kp.select(m, "l1", count=1000, scope="global", min_keep=5, round_to=4)
    assert all(c.kept == 8 for c in sel.groups)  # max(min_keep, 1) rounded up to a multiple of 4


def test_global_target_flops_on_residual_and_masking_contract():
    m = _residual()
    sel = kp.select(m, "bn_gamma", target_flops=0.6)
    assert sel.flops_after <= 0.6 * sel.flops_before
    pruned, _ = assert_removal_equals_masking(m, sel)
    assert kp.count_flops(pruned) == sel.flops_after
    assert kp.count_params(pruned) == sel.params_after
    # groups without a BN gamma (tail, residual stream has stem_bn) are either scored or listed
    reasons = {s.layers[0]: s.reason for s in sel.skipped}
    assert "no BatchNormalization" in reasons["tail"]
    assert "head" in reasons and "model output" in reasons["head"]
    sel = kp.select(m, "l1", target_params=0.5, scope="global")
    assert sel.params_after <= 0.5 * sel.params_before
    assert_removal_equals_masking(m, sel)


@pytest.mark.slow
def test_resnet50_half_flops():
    # At 32x32 every stage still has its full structure; the achieved figure is counted
    # on the rebuilt model at the same resolution.
    m = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3))
    sel = kp.select(m, "l1", target_flops=0.5)
    assert kp.count_flops(kp.remove_filters(m, sel)) == sel.flops_after  # the cost model is exact
    assert abs(sel.flops_after - 0.5 * sel.flops_before) <= 0.02 * 0.5 * sel.flops_before
    assert sel.flops_before == kp.count_flops(m)


def test_include_exclude_and_skipped():
    m = _residual()
    sel = kp.select(m, "l1", ratio=0.5, include=r"b\d_a")
    assert sorted(sel) == ["b0_a", "b1_a"]
    sel = kp.select(m, "l1", ratio=0.5, exclude=["b0_bn"])
    assert sorted(sel) == ["b1_a", "stem", "tail"]
    why = {s.layers[0]: s.reason for s in sel.skipped}
    assert why["b0_a"] == "excluded by 'b0_bn'"
    # excluding a consumer protects its inputs: the residual stream feeds b0_a
    sel = kp.select(m, "l1", ratio=0.5, exclude="b0_a")
    assert "stem" not in sel
    with pytest.raises(SelectionError, match="pattern 'nope' matches no layer"):
        kp.select(m, "l1", ratio=0.5, exclude="nope")


def test_json_round_trip(tmp_path):
    m = _residual()
    sel = kp.select(m, "l2", ratio=0.4, scope="global")
    back = kp.Selection.from_json(sel.to_json())
    assert dict(back) == dict(sel) and back.groups == sel.groups and back.skipped == sel.skipped
    assert (back.flops_before, back.flops_after, back.criterion) == (sel.flops_before, sel.flops_after, "l2")
    path = tmp_path / "sel.json"
    sel.save(path)
    assert dict(kp.Selection.load(path)) == dict(sel)
    assert [p.name for p in tmp_path.iterdir()] == ["sel.json"]
    assert kp.remove_filters(m, kp.Selection.load(path)).count_params() < m.count_params()
    assert str(sel) == sel.table() and "b0_a" in sel.table()
    with pytest.raises(AttributeError):
        sel.flops_after = 1
    with pytest.raises(TypeError):
        sel["stem"] = (1,)


@pytest.mark.parametrize(
    "text, match",
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "must be an object"),
        ('{"format": "other", "filters": {}}', "Not a kerasprune selection"),
        ('{"filters": {"c1": [1, -2]}}', "non-negative integers"),
        ('{"filters": {"c1": [1.5]}}', "non-negative integers"),
        ('{"version": 9, "filters": {}}', "Unsupported selection version"),
        ('{"nothing": 1}', "needs 'filters'"),
        ('{"filters": {}, "groups": [{"group": 1}]}', "Malformed"),
    ],
)
def test_bad_json(text, match):
    with pytest.raises(SelectionError, match=match):
        kp.Selection.from_json(text)


def test_load_missing_file(tmp_path):
    with pytest.raises(SelectionError, match="Cannot read"):
        kp.Selection.load(tmp_path / "missing.json")


def test_bare_filters_document():
    sel = kp.Selection.from_json(json.dumps({"filters": {"c1": [3, 1]}}))
    assert dict(sel) == {"c1": (1, 3)}


BAD_ARGUMENTS = [
    (dict(ratio=1.0), r"ratio must be a number in \[0, 1\)"),
    (dict(ratio=-0.1), r"ratio must be a number in \[0, 1\)"),
    (dict(ratio=0.2, count=2), "Give only one of"),
    (dict(threshold=0.1, target_flops=0.5), "Give only one of"),
    (dict(count=-1), "count must be"),
    (dict(ratio=0.1, scope="both"), "scope must be"),
    (dict(target_flops=0.0), "fraction to keep"),
    (dict(target_flops=1.5), "fraction to keep"),
    (dict(ratio=0.1, round_to=0), "round_to must be"),
    (dict(ratio=0.1, min_keep=0), "min_keep must be"),
    (dict(), "Say how much to remove"),
    (dict(target_flops=0.01), "unreachable"),
    (dict(target_params=0.5, min_keep=20), "unreachable"),
]


def test_bad_arguments():
    m = _classic()
    g = kp.analyze(m)
    for kwargs, match in BAD_ARGUMENTS:
        with pytest.raises(PruningError, match=match):
            kp.select(m, "l1", graph=g, **kwargs)


def test_bad_criterion_and_missing_data():
    m = _classic()
    with pytest.raises(PruningError, match="Unknown criterion 'magic'"):
        kp.select(m, "magic", ratio=0.1)
    with pytest.raises(PruningError, match="'apoz' is data-driven"):
        kp.select(m, "apoz", ratio=0.1)
    with pytest.raises(PruningError, match="different model"):
        kp.select(m, "l1", ratio=0.1, graph=kp.analyze(_classic()))


def test_data_driven_select_feeds_removal():
    m = _classic()
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(4, 8, 8, 3)).astype("float32") for _ in range(3))
    sel = kp.select(m, "apoz", ratio=0.25, data=data)
    assert sel.criterion == "apoz" and len(sel) == 4
    assert_removal_equals_masking(m, sel)


def test_include_by_layer_name_covers_its_parts_and_nested_layers():
    """`include=["mha"]` selects the attention heads group (`mha/heads`) too; a nested model's
    name covers the layers inside it."""
    inputs = keras.Input((6, 8))
    x = keras.layers.MultiHeadAttention(num_heads=4, key_dim=4, name="mha")(inputs, inputs)
    x = keras.layers.Dense(8, name="ffn")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(x))
    sel = kp.select(model, "l1", ratio=0.5, include=["mha"])
    graph = kp.analyze(model)
    chosen = {graph.group_of(name).id for name in sel}
    heads = [g for g in graph.groups if any(k.startswith("mha/") for k in g.layers)]
    assert heads and all(g.id in chosen for g in heads if g.prunable)
    assert "ffn" not in sel

    inner_in = keras.Input((8, 8, 3))
    inner = keras.Model(inner_in, keras.layers.Conv2D(8, 3, name="c")(inner_in), name="backbone")
    outer_in = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 1, name="head_conv")(inner(outer_in))
    outer = keras.Model(outer_in, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h)))
    sel = kp.select(outer, "l1", ratio=0.5, include="backbone")
    assert list(sel) == ["backbone/c"]
