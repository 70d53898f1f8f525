"""The central contract on hand-written topologies: removal == masking, original untouched."""

import keras
import numpy as np
import pytest

import kerasprune as kp
from conftest import assert_removal_equals_masking
from kerasprune.testing import copy_model, max_output_difference, random_input
from models import ALL, residual, squeeze_excite


def random_selection(graph, fraction=0.35, seed=0, exact_only=True):
    """Remove a random `fraction` of every prunable group, selected on its first producer."""
    rng = np.random.default_rng(seed)
    sel = {}
    for g in graph.prunable_groups:
        if exact_only and not g.exact:
            continue
        k = max(1, int(round(fraction * g.size)))
        k = min(k, g.size - 1)
        if k < 1:
            continue
        chans = set(rng.choice(g.size, size=k, replace=False).tolist())
        layer = g.layers[0]
        _, ch = graph.channels_of(layer)
        sel[layer] = [i for i, c in enumerate(ch.tolist()) if c in chans]
    return sel


@pytest.mark.backend
@pytest.mark.parametrize("name", sorted(ALL))
def test_removal_equals_masking(name):
    model = ALL[name]()
    graph = kp.analyze(model)
    assert graph.prunable_groups, graph.summary()
    sel = random_selection(graph)
    pruned, _ = assert_removal_equals_masking(model, sel)
    # The pruned model's groups are the original's minus what was removed.
    new_graph = kp.analyze(pruned)
    old_sizes = sorted(g.size - len(kp.make_plan(graph, sel).removed.get(g.id, [])) for g in graph.groups)
    assert sorted(g.size for g in new_graph.groups) == old_sizes


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_removal_equals_masking_other_seeds(seed):
    model = residual()
    sel = random_selection(kp.analyze(model), fraction=0.5, seed=seed)
    assert_removal_equals_masking(model, sel)


def test_residual_groups_are_coupled():
    model = residual()
    graph = kp.analyze(model)
    stream = graph.group_of("stem")
    assert stream.layers == ("stem", "b0_b", "b1_b")
    assert stream.size == 8 and stream.prunable and stream.exact
    assert graph.group_of("b0_b") is stream
    assert {"stem_bn", "b0_a", "b1_a", "head"} <= set(stream.members)
    head = graph.group_of("head")
    assert not head.prunable and "model output" in head.reason
    # Selecting on any producer of the stream removes the channel everywhere.
    pruned = kp.remove_filters(model, {"b1_b": [2]})
    for name in ("stem", "b0_b", "b1_b"):
        assert pruned.get_layer(name).filters == 7
    assert pruned.get_layer("b0_a").get_weights()[0].shape[-2] == 7


@pytest.mark.backend
def test_classic_recipe_leaks_through_batchnorm():
    """Zeroing kernel+bias only (the usual answer) does not silence a filter followed by BN."""
    model = residual()
    x = random_input(model, batch=4)
    sel = {"b0_a": [1, 4]}
    pruned = kp.remove_filters(model, sel)
    classic = copy_model(model)
    conv = classic.get_layer("b0_a")
    kernel, bias = conv.get_weights()
    kernel[..., [1, 4]] = 0
    bias[[1, 4]] = 0
    conv.set_weights([kernel, bias])
    assert max_output_difference(classic, pruned, x) > 1e-3
    masked = copy_model(model)
    kp.mask_filters(masked, sel)
    assert max_output_difference(masked, pruned, x) < 1e-4
    # kerasprune's mask also zeroes the BN parameters and the consumer rows.
    gamma, beta = masked.get_layer("b0_a_bn").get_weights()[:2]
    assert not gamma[[1, 4]].any() and not beta[[1, 4]].any()
    assert not masked.get_layer("b0_b").get_weights()[0][:, :, [1, 4], :].any()


def test_selection_forms_are_equivalent():
    model = residual()
    mask = np.zeros(6, dtype=bool)
    mask[[0, 5]] = True
    layer = model.get_layer("b0_a")
    outs = []
    for sel in ({"b0_a": [0, 5]}, {"b0_a": [-6, -1]}, {"b0_a": mask}, {layer: np.array([5, 0])}):
        outs.append([w.numpy() for w in kp.remove_filters(model, sel).get_layer("b0_b").weights])
    for other in outs[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(outs[0], other))


def test_union_over_group_layers():
    model = residual()
    graph = kp.analyze(model)
    plan = kp.make_plan(graph, {"stem": [0], "b0_b": [1], "b1_b": [0]})
    (gid, chans), = plan.removed.items()
    assert gid == graph.group_of("stem").id and chans.tolist() == [0, 1]
    assert {"stem", "stem_bn", "b0_b", "b1_b", "b0_a", "head"} <= set(plan.affected_layers)


def test_approximate_group_is_marked_and_still_valid():
    model = squeeze_excite()
    graph = kp.analyze(model)
    g = graph.group_of("proj")
    assert g.prunable and not g.exact and "ln" in g.approx_reason
    pruned = kp.remove_filters(model, {"proj": [1]})
    assert pruned.get_layer("ln").get_weights()[0].shape == (3,)
    masked = copy_model(model)
    kp.mask_filters(masked, {"proj": [1]})
    x = random_input(model)
    assert np.isfinite(kp.testing.predict(pruned, x)[0]).all()
    assert max_output_difference(pruned, masked, x) > 0  # LayerNorm statistics change


def test_squeeze_excite_couples_expand_conv():
    graph = kp.analyze(squeeze_excite())
    g = graph.group_of("c")
    assert g.layers == ("c", "se_expand")
    assert {"se_reduce", "proj"} <= set(g.members)


def test_nested_and_shared_layers():
    from models import nested_and_shared

    model = nested_and_shared()
    graph = kp.analyze(model)
    # A shared conv couples its two callers' inputs (p and q) into one group.
    assert graph.group_of("p") is graph.group_of("q")
    assert graph.key_of("inner_conv") == "block/inner_conv"
    assert_removal_equals_masking(model, {"inner_conv": [0, 3], "p": [2], "shared": [4]})


def test_empty_selection_is_a_noop_copy():
    model = residual()
    pruned = kp.remove_filters(model, {})
    assert pruned is not model
    assert pruned.count_params() == model.count_params()
    x = random_input(model)
    assert max_output_difference(pruned, model, x) == 0


def test_graph_summary_lists_groups():
    graph = kp.analyze(residual())
    text = graph.summary()
    assert "stem, b0_b, b1_b" in text and "blocked" in text and str(graph) == text


def test_input_model_keeps_config_and_weights():
    model = residual()
    config = model.get_config()
    kp.remove_filters(model, {"stem": [0, 1, 2]})
    kp.analyze(model)
    assert model.get_config() == config


def test_dense_units_are_filters():
    from models import dense_mlp

    model = dense_mlp()
    pruned = kp.remove_filters(model, {"d1": [0, 11], "d2": [3]})
    assert pruned.get_layer("d1").units == 10 and pruned.get_layer("d2").units == 6
    assert pruned.get_layer("head").get_weights()[0].shape == (6, 2)


def test_pruned_model_is_smaller():
    model = residual()
    pruned = kp.remove_filters(model, {"stem": [0, 1, 2, 3]})
    assert pruned.count_params() < model.count_params()
    assert isinstance(pruned, keras.Model)
