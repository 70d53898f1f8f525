"""Each criterion against an independent numpy computation on small models."""

import tracemalloc
import weakref

import keras
import numpy as np
import pytest
from keras import layers as L
from sklearn.metrics import pairwise_distances

import kerasprune as kp
from kerasprune.criteria import group_criterion, layer_criterion
from kerasprune.errors import PruningError
from kerasprune.testing import randomize_batchnorm, randomize_weights


def _chain():
    i = keras.Input((6, 6, 3))
    x = L.Conv2D(8, 3, padding="same", name="c1")(i)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="r1")(x)
    x = L.Conv2D(5, 3, name="c2")(x)
    x = L.BatchNormalization(name="bn2")(x)
    x = L.ReLU(name="r2")(x)
    o = L.Dense(3, name="head")(L.Flatten()(x))
    m = keras.Model(i, o)
    randomize_weights(m, 1)
    randomize_batchnorm(m, 2)
    return m


def _residual():
    i = keras.Input((6, 6, 3))
    a = L.Conv2D(6, 3, padding="same", name="a")(i)
    b = L.Conv2D(6, 1, name="b")(L.ReLU()(a))
    x = L.ReLU(name="sum_relu")(L.Add()([a, b]))
    o = L.Dense(2, name="head")(L.GlobalAveragePooling2D()(L.Conv2D(4, 1, name="c")(x)))
    m = keras.Model(i, o)
    randomize_weights(m, 3)
    return m


def _group_of(graph, name):
    return graph.group_of(name).id


def _k(m, name):
    return m.get_layer(name).kernel.numpy()


@pytest.mark.backend
def test_weight_criteria_single_producer():
    m = _chain()
    g = kp.analyze(m)
    k1, k2 = _k(m, "c1"), _k(m, "c2")
    expect = {
        "l1": lambda k: np.abs(k).mean(axis=(0, 1, 2)),
        "l2": lambda k: np.sqrt((k**2).mean(axis=(0, 1, 2))),
        "mean": lambda k: k.mean(axis=(0, 1, 2)),
        "fpgm": lambda k: (
            pairwise_distances(k.reshape(-1, k.shape[-1]).T).sum(1)
            / (k.shape[-1] - 1)
            / np.sqrt(np.prod(k.shape[:-1]))
        ),
    }
    for name, fn in expect.items():
        s = kp.score(m, name, graph=g)
        np.testing.assert_allclose(s[_group_of(g, "c1")], fn(k1), rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(s[_group_of(g, "c2")], fn(k2), rtol=1e-5, atol=1e-6, err_msg=name)
    s = kp.score(m, "bn_gamma", graph=g)
    np.testing.assert_allclose(s[_group_of(g, "c1")], np.abs(m.get_layer("bn1").gamma.numpy()), rtol=1e-6)
    np.testing.assert_allclose(s[_group_of(g, "c2")], np.abs(m.get_layer("bn2").gamma.numpy()), rtol=1e-6)


def test_residual_group_averages_producers():
    m = _residual()
    g = kp.analyze(m)
    gid = _group_of(g, "a")
    assert gid == _group_of(g, "b")
    s = kp.score(m, "l1", graph=g)[gid]
    expect = (np.abs(_k(m, "a")).mean(axis=(0, 1, 2)) + np.abs(_k(m, "b")).mean(axis=(0, 1, 2))) / 2
    np.testing.assert_allclose(s, expect, rtol=1e-5)
    with pytest.raises(KeyError):
        kp.score(m, "bn_gamma", graph=g)[gid]  # no BN: the group cannot be scored


def test_zero_finds_dead_filters():
    m = _chain()
    conv = m.get_layer("c1")
    k, b = conv.kernel.numpy(), conv.bias.numpy()
    k[..., [1, 6]] = 0
    b[[1, 6]] = 0
    k[..., 3] = 0  # kernel zero but bias alive: not dead
    b[3] = 0.5
    conv.set_weights([k, b])
    g = kp.analyze(m)
    s = kp.score(m, "zero", graph=g)[_group_of(g, "c1")]
    expect = np.abs(k).sum(axis=(0, 1, 2)) + np.abs(b)
    np.testing.assert_allclose(s, expect, rtol=1e-6)
    assert np.flatnonzero(s == 0).tolist() == [1, 6]
    sel = kp.select(m, "zero", graph=g)
    assert dict(sel) == {"c1": (1, 6)}


def test_random_is_seeded():
    m = _chain()
    a = kp.score(m, "random", seed=3)
    b = kp.score(m, "random", seed=3)
    c = kp.score(m, "random", seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)
    assert all(((v >= 0) & (v < 1)).all() for v in a.values())


def test_user_callables():
    m = _chain()
    g = kp.analyze(m)
    gid = _group_of(g, "c1")
    maxabs = kp.score(m, lambda w: np.abs(w).max(axis=(0, 1, 2)), graph=g)
    np.testing.assert_allclose(maxabs[gid], np.abs(_k(m, "c1")).max(axis=(0, 1, 2)), rtol=1e-6)
    by_index = kp.score(m, lambda group, ctx: np.arange(group.size, dtype=float), graph=g)
    assert by_index[gid].tolist() == list(range(8))
    wrapped = kp.score(m, layer_criterion(lambda w, extra=1: w.sum(axis=(0, 1, 2))), graph=g)
    np.testing.assert_allclose(wrapped[gid], _k(m, "c1").sum(axis=(0, 1, 2)), rtol=1e-5)
    ctx_sizes = kp.score(
        m, group_criterion(lambda group, ctx: np.full(group.size, len(ctx.kernels(group)))), graph=g
    )
    assert ctx_sizes[gid].tolist() == [1.0] * 8
    with pytest.raises(PruningError, match="returned 3 scores"):
        kp.score(m, lambda w: np.zeros(3), graph=g)
    with pytest.raises(PruningError, match="3 required arguments"):
        kp.score(m, lambda a, b, c: None, graph=g)


def _batches(n, seed=0, batch=4, labels=True):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = rng.normal(size=(batch, 6, 6, 3)).astype("float32")
        y = keras.utils.to_categorical(rng.integers(0, 3, batch), 3).astype("float32")
        yield (x, y) if labels else x


def _relu_outputs(m, xs):
    tap = keras.Model(m.input, [m.get_layer("r1").output, m.get_layer("r2").output])
    outs = [tap(x) for x in xs]
    return [np.concatenate([keras.ops.convert_to_numpy(o[i]) for o in outs]) for i in range(2)]


@pytest.mark.backend
def test_apoz_and_mean_activation():
    m = _chain()
    g = kp.analyze(m)
    xs = list(_batches(5, labels=False))
    r1, r2 = _relu_outputs(m, xs)
    apoz = kp.score(m, "apoz", data=iter(xs), graph=g)
    mean = kp.score(m, "mean_activation", data=((x, None) for x in xs), graph=g)
    for name, r in (("c1", r1), ("c2", r2)):
        gid = _group_of(g, name)
        np.testing.assert_allclose(apoz[gid], 1 - (r == 0).mean(axis=(0, 1, 2)), rtol=1e-6)
        np.testing.assert_allclose(mean[gid], r.mean(axis=(0, 1, 2)), rtol=1e-4)


@pytest.mark.backend
def test_taylor_matches_finite_differences():
    """|d loss / d s_c| for a gate s_c on channel c of the activation, by central differences."""
    i = keras.Input((6, 6, 3))
    a = L.ReLU(name="r1")(L.Conv2D(4, 3, padding="same", name="c1")(i))
    head = keras.Model(i, a)
    j = keras.Input((6, 6, 4))
    tail = keras.Model(j, L.Dense(3, name="head")(L.Flatten()(L.Conv2D(3, 3, name="c2")(j))))
    m = keras.Model(i, tail(head(i)))
    randomize_weights(m, 5)
    loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    batches = list(_batches(3))
    eps = 1e-2
    expect = np.zeros(4)
    for x, y in batches:
        act = keras.ops.convert_to_numpy(head(x)).astype("float64")
        d = np.zeros(4)
        for c in range(4):
            vals = []
            for s in (1 + eps, 1 - eps):
                gate = np.ones(4)
                gate[c] = s
                vals.append(float(loss(y, tail((act * gate).astype("float32")))))
            d[c] = (vals[0] - vals[1]) / (2 * eps)
        expect += np.abs(d) / len(batches)
    g = kp.analyze(m)
    s = kp.score(m, "taylor", data=iter(batches), loss=loss, graph=g)
    np.testing.assert_allclose(s[g.group_of("c1").id], expect, rtol=2e-2, atol=1e-5)


def test_data_is_streamed_one_batch_at_a_time():
    m = _chain()
    live = [0]
    most = [0]

    def gen(n):
        rng = np.random.default_rng(0)
        for _ in range(n):
            x = rng.normal(size=(8, 6, 6, 3)).astype("float32")
            live[0] += 1
            most[0] = max(most[0], live[0])
            weakref.finalize(x, lambda: live.__setitem__(0, live[0] - 1))
            yield x

    kp.score(m, "apoz", data=gen(40))
    assert most[0] <= 2  # the batch being scored and the one being produced
    # A stream of 40 MB never sits in memory at once.
    n_batches, shape = 60, (1024, 6, 6, 3)  # 60 x 442 KB = 26.5 MB in total
    big = (np.full(shape, k, dtype="float32") for k in range(n_batches))
    tracemalloc.start()
    try:
        kp.score(m, "mean_activation", data=big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n_batches * np.prod(shape) * 4 / 3


def test_data_driven_errors():
    m = _chain()
    with pytest.raises(PruningError, match="'apoz' is data-driven"):
        kp.score(m, "apoz")
    with pytest.raises(PruningError, match="'taylor' needs loss"):
        kp.score(m, "taylor", data=_batches(1))
    with pytest.raises(PruningError, match="labelled batches"):
        kp.score(m, "taylor", data=_batches(1, labels=False), loss="categorical_crossentropy")
    with pytest.raises(PruningError, match="no batches"):
        kp.score(m, "mean_activation", data=[])
    with pytest.raises(PruningError, match="Unknown criterion 'l3'"):
        kp.score(m, "l3")
