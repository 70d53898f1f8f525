"""GroupLasso: the proximal step is block soft-thresholding, zero channels are exactly removable."""

import os

import keras
import numpy as np
import pytest

import kerasprune as kp
from conftest import run_result_script
from kerasprune.testing import max_output_difference
from models import residual, two_conv_classifier


def _bn(model, name):
    return [keras.ops.convert_to_numpy(w).astype(np.float64) for w in model.get_layer(name).weights[:2]]


def _attached(model, **kwargs):
    lasso = kp.GroupLasso(1.0, **kwargs)
    lasso.set_model(model)
    lasso.on_train_begin()
    return lasso


@pytest.mark.backend
def test_proximal_step_is_block_soft_thresholding_of_gamma_and_beta():
    model = two_conv_classifier(channels=3, classes=3, bn_seed=1)
    lasso = _attached(model)  # "auto": BN gamma and beta for these groups
    before = {name: _bn(model, name) for name in ("bn1", "bn2")}
    norms = {name: np.hypot(*before[name]) for name in before}
    t = float(np.median(np.concatenate(list(norms.values()))))
    lasso._weights.shrink(t)
    for name, (gamma, beta) in before.items():
        scale = np.maximum(0.0, 1.0 - t / norms[name])  # reference, from the layer's own weights
        new_gamma, new_beta = _bn(model, name)
        np.testing.assert_allclose(new_gamma, gamma * scale, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(new_beta, beta * scale, rtol=1e-5, atol=1e-7)
        below = norms[name] <= t
        assert below.any() and (~below).any()
        assert np.all(new_gamma[below] == 0) and np.all(new_beta[below] == 0)  # exactly zero
        np.testing.assert_allclose(np.hypot(new_gamma, new_beta)[~below], norms[name][~below] - t, rtol=1e-5)
    # the producers' kernels are untouched in this mode
    assert lasso.norms().keys() == kp.group_norms(model).keys()


def test_zeroed_channels_are_removed_without_changing_the_outputs():
    model = residual()  # the residual Add couples stem and block outputs into one group
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    lasso = _attached(model, penalize="normalization")
    norms = lasso.norms()
    t = float(np.median(np.concatenate(list(norms.values()))))
    lasso._weights.shrink(t)
    zero = {gid: n <= t for gid, n in norms.items()}
    after = kp.group_norms(model, penalize="normalization")
    for gid in norms:
        assert np.all(after[gid][zero[gid]] == 0) and np.all(after[gid][~zero[gid]] > 0)
    selection = kp.select(model, "bn_gamma", threshold=1e-30)
    assert sum(len(c.removed) for c in selection.groups) == sum(int(z.sum()) for z in zero.values())
    pruned = kp.remove_filters(model, selection)
    assert pruned.count_params() < model.count_params()
    assert max_output_difference(pruned, model, x) < 1e-5


def test_all_params_zero_every_weight_masking_zeroes():
    model = two_conv_classifier(channels=3, classes=3, bn_seed=2)
    lasso = _attached(model, penalize="all")
    norms = lasso.norms()
    gid = kp.analyze(model).group_of("c1").id
    t = float(np.sort(norms[gid])[2])  # three channels of c1's group at or below the threshold
    lasso._weights.shrink(t)
    gone = np.flatnonzero(norms[gid] <= t)
    assert len(gone) == 3
    c1, c2 = model.get_layer("c1"), model.get_layer("c2")
    kernel1, bias1 = (keras.ops.convert_to_numpy(w) for w in c1.weights[:2])
    kernel2 = keras.ops.convert_to_numpy(c2.weights[0])
    gamma, beta = _bn(model, "bn1")
    for part in (kernel1[..., gone], bias1[gone], gamma[gone], beta[gone], kernel2[:, :, gone, :]):
        assert np.all(part == 0)
    after = lasso.norms()
    for g, n in norms.items():
        assert np.all(after[g] <= n + 1e-6)  # overlapping groups only shrink each other


@pytest.mark.backend
def test_ratio_penalizes_only_the_weakest_channels_of_each_group():
    model = two_conv_classifier(channels=3, classes=3, bn_seed=3)
    lasso = _attached(model, ratio=kp.PolynomialSchedule(0.0, 0.5, begin=0, end=2))
    before = {name: _bn(model, name) for name in ("bn1", "bn2")}
    lasso.on_epoch_begin(0)  # ratio 0: nothing is penalized
    lasso._weights.shrink(100.0)
    assert all(np.array_equal(_bn(model, n)[0], before[n][0]) for n in before)
    lasso.on_epoch_begin(2)  # ratio 0.5: the 4 weakest of 8 channels per group
    lasso._weights.shrink(100.0)
    for name, (gamma, beta) in before.items():
        weakest = np.argsort(np.hypot(gamma, beta), kind="stable")[:4]
        new_gamma, new_beta = _bn(model, name)
        hit = np.zeros(8, dtype=bool)
        hit[weakest] = True
        assert np.all(new_gamma[hit] == 0) and np.all(new_beta[hit] == 0)
        assert np.array_equal(new_gamma[~hit], gamma[~hit]) and np.array_equal(new_beta[~hit], beta[~hit])


@pytest.mark.backend
def test_target_flops_penalizes_what_a_global_select_would_remove():
    model = residual()
    lasso = _attached(model, target_flops=lambda epoch: 1.0 if epoch == 0 else 0.4, min_keep=2)
    before = lasso.norms()
    lasso.on_epoch_begin(0)  # 1.0: nothing is penalized
    lasso._weights.shrink(100.0)
    assert all(np.array_equal(n, before[g]) for g, n in lasso.norms().items())
    lasso.on_epoch_begin(1)
    chosen = {g: np.flatnonzero(m) for g, m in lasso._weights.active.items()}
    # the reference: select ranking the same norms (normalized per group), with the same target and min_keep
    expected = kp.select(
        model, kp.criteria.group_criterion(lambda g, ctx: before[g.id]), target_flops=0.4, min_keep=2
    ).plan_for(model).removed
    assert {g: c.tolist() for g, c in chosen.items() if len(c)} == {g: list(c) for g, c in expected.items()}
    sizes = {g: len(c) for g, c in chosen.items()}
    assert len({sizes[g] / len(before[g]) for g in sizes}) > 1  # not the same share of every group
    lasso._weights.shrink(100.0)
    after = lasso.norms()
    for g, n in after.items():
        hit = np.zeros(len(n), dtype=bool)
        hit[chosen[g]] = True
        assert np.all(n[hit] == 0) and np.array_equal(n[~hit], before[g][~hit])
    pruned = kp.remove_filters(model, kp.select(model, "bn_gamma", threshold=1e-30))
    assert kp.count_flops(pruned) <= 0.4 * kp.count_flops(model)


def test_errors():
    with pytest.raises(kp.PruningError, match="strength"):
        kp.GroupLasso(0.0)
    with pytest.raises(kp.PruningError, match="penalize"):
        kp.GroupLasso(1.0, penalize="kernels")
    with pytest.raises(kp.PruningError, match="ratio"):
        kp.GroupLasso(1.0, ratio=1.0)
    with pytest.raises(kp.PruningError, match="learning_rate"):
        kp.GroupLasso(1.0, learning_rate=-1.0)
    with pytest.raises(kp.PruningError, match="once training has started"):
        kp.GroupLasso(1.0).norms()
    with pytest.raises(kp.PruningError, match="ratio or target_flops, not both"):
        kp.GroupLasso(1.0, ratio=0.5, target_flops=0.5)
    for bad in (0.0, 1.5, True):
        with pytest.raises(kp.PruningError, match=r"target_flops must be a fraction of the MACs in \(0, 1\]"):
            kp.GroupLasso(1.0, target_flops=bad)
    with pytest.raises(kp.PruningError, match="criterion= ranks channels for target_flops="):
        kp.GroupLasso(1.0, criterion="l1")
    with pytest.raises(kp.PruningError, match="min_keep"):
        kp.GroupLasso(1.0, target_flops=0.5, min_keep=0)
    lasso = _attached(two_conv_classifier(channels=3, classes=3), target_flops=lambda epoch: 0.0)
    with pytest.raises(kp.PruningError, match="schedule at epoch 3 must be a fraction"):
        lasso.on_epoch_begin(3)


SCRIPT = """
import json, keras, numpy as np, sys
sys.path.insert(0, {tests!r})
import kerasprune as kp
from models import two_conv_classifier

rng = np.random.default_rng(0)
x = rng.normal(size=(64, 8, 8, 3)).astype("float32")
y = rng.integers(0, 3, 64)
result = {{}}

# 1. Inside fit, with a zero learning rate only the proximal step moves the weights:
#    after k batches every channel norm is exactly max(0, n0 - k * t).
model = two_conv_classifier(channels=3, classes=3, bn_seed=1)
model.compile(optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
n0 = kp.group_norms(model)
lasso = kp.GroupLasso(2.0, learning_rate=0.05)  # t = 0.1 per batch


class Record(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.norms = []

    def on_train_batch_end(self, batch, logs=None):
        self.norms.append({{g: n.tolist() for g, n in lasso.norms().items()}})


record = Record()
model.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False, callbacks=[lasso, record])
result["n0"] = {{g: n.tolist() for g, n in n0.items()}}
result["trace"] = record.norms

# 2. Real training with Adam: channels reach exactly zero and are removed without changing the outputs.
model = two_conv_classifier(channels=3, classes=3, bn_seed=1)
model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
model.fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[kp.GroupLasso(3.0)])
zero = {{g: int((n == 0).sum()) for g, n in kp.group_norms(model).items()}}
selection = kp.select(model, "bn_gamma", threshold=1e-30)
pruned = kp.remove_filters(model, selection)
result["zero"] = zero
result["removed"] = {{c.group: len(c.removed) for c in selection.groups}}
result["diff"] = float(np.abs(pruned.predict(x[:8], verbose=0) - model.predict(x[:8], verbose=0)).max())

# 3. target_flops inside fit: the channels a global selection at 50% of the MACs removes reach zero;
#    removing exactly the zero channels meets the target and changes nothing.
model = two_conv_classifier(channels=3, classes=3, bn_seed=1)
model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
model.fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[kp.GroupLasso(20.0, target_flops=0.5)])
zeros = kp.select(model, "bn_gamma", threshold=1e-30)
small = kp.remove_filters(model, zeros)
result["target_ratio"] = kp.count_flops(small) / kp.count_flops(model)
result["target_diff"] = float(np.abs(small.predict(x[:8], verbose=0) - model.predict(x[:8], verbose=0)).max())
print("RESULT" + json.dumps(result))
"""




@pytest.mark.backend
def test_group_lasso_inside_fit_shrinks_exactly_and_zeroes_removable_channels():
    result = run_result_script(SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__))))
    n0 = {g: np.asarray(n) for g, n in result["n0"].items()}
    assert len(result["trace"]) == 8  # 4 batches x 2 epochs
    for k, norms in enumerate(result["trace"], start=1):
        for g, n in norms.items():
            np.testing.assert_allclose(n, np.maximum(0.0, n0[g] - 0.1 * k), atol=1e-5, err_msg=f"batch {k}")
    assert sum(result["zero"].values()) > 0
    zero = {int(g): z for g, z in result["zero"].items() if z}
    assert zero == {int(g): r for g, r in result["removed"].items() if r}
    assert result["diff"] < 1e-5
    assert 0.4 < result["target_ratio"] <= 0.5 and result["target_diff"] < 1e-5
