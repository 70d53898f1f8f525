"""Random valid Keras models and selections for property-based tests.

One generator, two sources of randomness: `hypothesis` (tests/test_fuzz.py,
via `draw_case(data)`) and a seeded `random.Random`
(benchmarks/fuzz.py, via `RandomDraw`). Both go through the small `Draw`
interface, so a failing seed in the long benchmark rebuilds the same model.

The vocabulary covers every supported channel pattern: Conv1D/2D,
Conv*Transpose, DepthwiseConv with depth_multiplier 1-2, SeparableConv, Dense
(also point-wise on a feature map), BatchNormalization, activations (relu,
sigmoid, tanh, PReLU, LeakyReLU), max/avg/global pooling (with keepdims),
ZeroPadding/Cropping/UpSampling, residual Add/Subtract/Multiply/Average/
Maximum/Minimum, Concatenate on the channel axis (also of the same tensor
twice) and on a spatial axis, squeeze-excite, Flatten->Dense, nested
Functional submodels, and both data formats (TensorFlow's CPU backend runs
channels_first convolutions, so they are fuzzed everywhere). On 1-D channels_last
inputs (sequences) it also draws MultiHeadAttention blocks (residual, gated, FFN)
and recurrent layers (LSTM, GRU, SimpleRNN, Bidirectional); see the last section.
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
from hypothesis import strategies as st

import kerasprune as kp
from kerasprune.testing import max_output_difference, random_input, randomize_batchnorm, randomize_weights

L = keras.layers
MAX_CHANNELS = 12
TOL = 1e-4

#: Keras 3.15.1, TensorFlow backend: `ops.add(x, bias)` guesses the bias layout
#: and calls `tf.nn.bias_add(..., "NHWC")` whenever the bias length equals the
#: last axis, so a channels_first Conv whose `filters` equal the input's last
#: spatial width adds its bias along the width (wrong outputs, in any model).
#: The generator keeps channels_first widths above `MAX_CHANNELS` so that every
#: model it builds is computed correctly by Keras itself.
KERAS_CHANNELS_FIRST_BIAS_BUG = "keras==3.15.1 TF backend ops.add bias_add layout guess"


# -- sources of randomness -----------------------------------------------------------
class RandomDraw:
    """`Draw` backed by `random.Random(seed)` (the long fuzzing benchmark)."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, options):
        return options[self.rng.randrange(len(options))]

    def boolean(self) -> bool:
        return self.rng.random() < 0.5

    def sample(self, options, k: int) -> list:
        return self.rng.sample(list(options), k)


class HypothesisDraw(RandomDraw):
    """`Draw` backed by hypothesis's `draw` (shrinkable, derandomized in CI)."""

    def __init__(self, draw):
        self.draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def choice(self, options):
        return options[self.draw(st.integers(0, len(options) - 1))]

    def boolean(self) -> bool:
        return self.draw(st.booleans())

    def sample(self, options, k: int) -> list:
        options = list(options)
        idx = self.draw(st.lists(st.integers(0, len(options) - 1), min_size=k, max_size=k, unique=True))
        return [options[i] for i in idx]


# -- the model generator ---------------------------------------------------------------
@dataclass
class _Ctx:
    d: RandomDraw
    fmt: str
    dims: int
    blocks: list[str] = field(default_factory=list)
    n: int = 0

    @property
    def min_size(self) -> int:
        """Smallest spatial width allowed (see `KERAS_CHANNELS_FIRST_BIAS_BUG`)."""
        return MAX_CHANNELS + 1 if self.fmt == "channels_first" else 3

    @property
    def ax(self) -> int:
        return 1 if self.fmt == "channels_first" else -1

    def chans(self, x) -> int:
        return int(x.shape[self.ax])

    def size(self, x) -> int:
        return int(x.shape[2] if self.fmt == "channels_first" else x.shape[1])

    def name(self, kind: str) -> str:
        self.n += 1
        return f"{kind}_{self.n}"

    def cls(self, base: str):
        return getattr(L, f"{base}{self.dims}D")

    def width(self) -> int:
        return self.d.integer(2, 8)


def _act(c: _Ctx, x):
    kind = c.d.choice(["none", "relu", "sigmoid", "tanh", "prelu", "leaky", "relu_layer"])
    if kind == "none":
        return x
    if kind == "prelu":
        shared = list(range(1, c.dims + 1)) if c.fmt == "channels_last" else list(range(2, c.dims + 2))
        if len(x.shape) == 2 or c.d.boolean():
            shared = None
        return L.PReLU(shared_axes=shared, name=c.name("prelu"))(x)
    if kind == "leaky":
        return L.LeakyReLU(negative_slope=0.2, name=c.name("leaky"))(x)
    if kind == "relu_layer":
        return L.ReLU(name=c.name("relu"))(x)
    return L.Activation(kind, name=c.name(kind))(x)


def _bn(c: _Ctx, x, axis=None):
    if c.d.boolean():
        return L.BatchNormalization(axis=c.ax if axis is None else axis, name=c.name("bn"))(x)
    return x


def _conv(c: _Ctx, x, filters=None, kernel=None, padding="same"):
    filters = c.width() if filters is None else filters
    kernel = c.d.choice([1, 3]) if kernel is None else kernel
    act = c.d.choice([None, None, "relu", "sigmoid"])
    return c.cls("Conv")(
        filters, kernel, padding=padding, data_format=c.fmt, activation=act,
        use_bias=c.d.boolean() or act is not None, name=c.name("conv"),
    )(x)  # fmt: skip


def _block_conv(c: _Ctx, x):
    valid = c.size(x) - 2 >= max(c.min_size, 4) and c.d.boolean()
    x = _conv(c, x, kernel=3 if valid else None, padding="valid" if valid else "same")
    return _act(c, _bn(c, x))


def _block_depthwise(c: _Ctx, x):
    m = c.d.integer(1, 2) if c.chans(x) * 2 <= MAX_CHANNELS else 1
    x = c.cls("DepthwiseConv")(
        3, padding="same", depth_multiplier=m, data_format=c.fmt, use_bias=c.d.boolean(),
        name=c.name("dwconv"),
    )(x)  # fmt: skip
    return _act(c, _bn(c, x))


def _block_separable(c: _Ctx, x):
    m = c.d.integer(1, 2)
    x = c.cls("SeparableConv")(
        c.width(), 3, padding="same", depth_multiplier=m, data_format=c.fmt, name=c.name("sepconv")
    )(x)
    return _act(c, _bn(c, x))


def _block_residual(c: _Ctx, x):
    merge = c.d.choice([L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum])
    y = _act(c, _bn(c, _conv(c, x, filters=c.chans(x))))
    pair = [x, y] if c.d.boolean() else [y, x]
    return merge(name=c.name(merge.__name__.lower()))(pair)


def _block_concat(c: _Ctx, x):
    kind = c.d.choice(["twice", "branches", "skip", "spatial"])
    if kind == "twice" and 2 * c.chans(x) <= MAX_CHANNELS:
        parts = [x, x]
    elif kind == "spatial":  # concatenation along a spatial axis couples the channels
        y = _conv(c, x, filters=c.chans(x))
        return L.Concatenate(axis=2 if c.fmt == "channels_first" else 1, name=c.name("concat_sp"))([x, y])
    elif kind == "skip" and c.chans(x) < MAX_CHANNELS:
        parts = [x, _conv(c, x, filters=c.d.integer(1, MAX_CHANNELS - c.chans(x)))]
    else:
        parts = [_conv(c, x, filters=c.d.integer(1, 6)), _act(c, _conv(c, x, filters=c.d.integer(1, 6)))]
    return L.Concatenate(axis=c.ax, name=c.name("concat"))(parts)


def _block_se(c: _Ctx, x):
    ch = c.chans(x)
    keep = c.d.boolean()
    s = c.cls("GlobalAveragePooling")(data_format=c.fmt, keepdims=keep, name=c.name("se_gap"))(x)
    if not keep:
        ones = (1,) * c.dims
        target = (ch,) + ones if c.fmt == "channels_first" else ones + (ch,)
        s = L.Reshape(target, name=c.name("se_reshape"))(s)
    s = c.cls("Conv")(c.d.integer(1, 4), 1, data_format=c.fmt, activation="relu", name=c.name("se_reduce"))(s)
    s = c.cls("Conv")(ch, 1, data_format=c.fmt, activation="sigmoid", name=c.name("se_expand"))(s)
    pair = [x, s] if c.d.boolean() else [s, x]
    return L.Multiply(name=c.name("se_scale"))(pair)


def _block_spatial(c: _Ctx, x):
    size = c.size(x)
    options = ["pool_max", "pool_avg"] if size // 2 >= max(c.min_size, 3) else []
    if size <= 12 or c.fmt == "channels_first":
        options.append("pad")
    if size - 2 >= max(c.min_size, 4) and (c.dims == 2 or c.fmt == "channels_last"):
        options.append("crop")
    if size <= 6 and (c.dims == 2 or c.fmt == "channels_last"):
        options.append("up")
    if not options:
        return x
    kind = c.d.choice(options)
    fmt = {} if (c.dims == 1 and kind in ("crop", "up")) else {"data_format": c.fmt}
    if kind == "pool_max":
        return c.cls("MaxPooling")(2, name=c.name("maxpool"), **fmt)(x)
    if kind == "pool_avg":
        return c.cls("AveragePooling")(2, name=c.name("avgpool"), **fmt)(x)
    if kind == "pad":
        return c.cls("ZeroPadding")(1, name=c.name("pad"), **fmt)(x)
    if kind == "crop":
        return c.cls("Cropping")(1, name=c.name("crop"), **fmt)(x)
    return c.cls("UpSampling")(2, name=c.name("up"), **fmt)(x)


def _block_nested(c: _Ctx, x):
    inner_in = keras.Input(tuple(x.shape[1:]))
    y = _act(c, _bn(c, _conv(c, inner_in)))
    if c.d.boolean():
        y = _act(c, _bn(c, _conv(c, y)))
    sub = keras.Model(inner_in, y, name=c.name("sub"))
    return sub(x)


def _block_dense_pointwise(c: _Ctx, x):
    if c.fmt != "channels_last":
        return _block_conv(c, x)
    return _act(c, L.Dense(c.width(), name=c.name("dense_pw"))(x))


def _block_dropout(c: _Ctx, x):
    if c.d.boolean():
        return L.Dropout(0.3, name=c.name("dropout"))(x)
    fmt = {"data_format": c.fmt} if c.dims == 2 else {}
    if c.dims == 1 and c.fmt == "channels_first":
        return L.Dropout(0.3, name=c.name("dropout"))(x)
    return c.cls("SpatialDropout")(0.3, name=c.name("sdropout"), **fmt)(x)


def _block_transpose_conv(c: _Ctx, x):
    strides = 2 if c.size(x) <= 6 and c.d.boolean() else 1
    x = getattr(L, f"Conv{c.dims}DTranspose")(
        c.width(), c.d.choice([2, 3]), strides=strides, padding="same", data_format=c.fmt,
        name=c.name("convT"),
    )(x)  # fmt: skip
    return _act(c, _bn(c, x))


BLOCKS = {
    "conv": _block_conv,
    "depthwise": _block_depthwise,
    "separable": _block_separable,
    "transpose": _block_transpose_conv,
    "residual": _block_residual,
    "concat": _block_concat,
    "se": _block_se,
    "spatial": _block_spatial,
    "nested": _block_nested,
    "dense_pointwise": _block_dense_pointwise,
    "dropout": _block_dropout,
}
HEADS = ("gap_dense", "flatten_dense", "gmp_keepdims_flatten", "conv_out")


def _head(c: _Ctx, x, kind: str):
    if kind == "conv_out":
        return c.cls("Conv")(2, 1, data_format=c.fmt, name=c.name("conv_out"))(x)
    if kind == "gap_dense":
        x = c.cls("GlobalAveragePooling")(data_format=c.fmt, name=c.name("gap"))(x)
    elif kind == "gmp_keepdims_flatten":
        x = c.cls("GlobalMaxPooling")(data_format=c.fmt, keepdims=True, name=c.name("gmp"))(x)
        x = L.Flatten(data_format=c.fmt, name=c.name("flatten"))(x)
    else:
        x = L.Flatten(data_format=c.fmt, name=c.name("flatten"))(x)
    if c.d.boolean():
        x = L.Dense(c.width(), activation=c.d.choice([None, "relu", "sigmoid"]), name=c.name("dense"))(x)
        x = _bn(c, x, axis=-1)
        if c.d.boolean():
            x = L.Dropout(0.2, name=c.name("dropout"))(x)
    return L.Dense(3, name=c.name("logits"))(x)


def build_random_model(d: RandomDraw) -> tuple[keras.Model, list[str]]:
    """A random valid Functional model and the list of its building blocks."""
    fmt = d.choice(["channels_last", "channels_first"])
    dims = d.integer(1, 2)
    c = _Ctx(d, fmt, dims)
    # channels_first widths stay above every channel count: see KERAS_CHANNELS_FIRST_BIAS_BUG.
    size = d.choice([8, 12]) if fmt == "channels_last" else d.choice([14, 28] if dims == 2 else [28, 32])
    cin = d.integer(1, 3)
    shape = (cin,) + (size,) * dims if fmt == "channels_first" else (size,) * dims + (cin,)
    inp = keras.Input(shape, name="image")
    x = _act(c, _bn(c, _conv(c, inp)))
    for _ in range(d.integer(1, 4)):
        kind = d.choice(sorted(BLOCKS))
        if c.chans(x) > MAX_CHANNELS and kind in ("depthwise", "concat", "residual", "se", "spatial"):
            kind = "conv"
        c.blocks.append(kind)
        x = BLOCKS[kind](c, x)
    head = d.choice(HEADS)
    c.blocks.append(head)
    out = _head(c, x, head)
    model = keras.Model(inp, out, name="fuzz")
    return model, [f"{fmt}/{dims}d"] + c.blocks


# -- selections -----------------------------------------------------------------------
def draw_selection(d: RandomDraw, graph) -> tuple[dict, dict[str, int]]:
    """A random selection over prunable groups that never empties a group.

    Returns the selection and, per touched group (keyed by its first
    producer), the number of group channels it removes.
    """
    groups = list(graph.prunable_groups)
    if not groups:
        return {}, {}
    chosen = d.sample(groups, d.integer(1, len(groups)))
    selection, removed = {}, {}
    for g in chosen:
        if g.size < 2:
            continue
        layer = d.choice(list(g.layers))
        gids, chans = graph.channels_of(layer)
        first = {}
        for pos, (gid, ch) in enumerate(zip(gids.tolist(), chans.tolist())):
            if gid == g.id:
                first.setdefault(ch, pos)
        k = d.integer(1, len(first) - 1) if len(first) > 1 else 0
        if not k:
            continue
        picked = set(d.sample(sorted(first), k))
        for producer in g.layers:  # every producer keeps a filter (Concatenate splits groups)
            pg, pc = graph.channels_of(producer)
            own = set(pc[pg == g.id].tolist())
            if own <= picked:
                picked.discard(min(own))
        _keep_one_per_part(graph, g, picked)  # slices and splits of the group (keras.ops section)
        if not picked:
            continue
        k = len(picked)
        positions = sorted(first[ch] for ch in picked)
        width = len(gids)
        form = d.choice(["list", "negative", "mask", "array"])
        if form == "negative":
            value = [p - width for p in positions]
        elif form == "mask":
            value = np.isin(np.arange(width), positions)
        elif form == "array":
            value = np.asarray(positions, dtype=np.int32)
        else:
            value = positions
        selection[layer] = value
        removed[g.layers[0]] = k
    return selection, removed


def draw_case(data) -> tuple[keras.Model, list[str], dict, dict[str, int]]:
    """(model, blocks, selection, removed counts per group) from `st.data()`.

    Used inside the test body (`@given(data=st.data())`), not as a composite
    strategy: building Keras layers touches the global `random` module, which
    hypothesis forbids inside strategies.
    """
    keras.backend.clear_session(free_memory=False)  # the fixture collects garbage per test
    d = HypothesisDraw(data.draw)
    model, blocks = build_random_model(d)
    seed = d.integer(0, 2**16)
    randomize_weights(model, seed=seed)
    randomize_batchnorm(model, seed=seed + 1)
    graph = kp.analyze(model)
    selection, removed = draw_selection(d, graph)
    data.draw(st.just(blocks), label="blocks")
    return model, blocks, selection, removed


# -- the properties -------------------------------------------------------------------
def _config_and_weights(model):
    return model.get_config(), [np.array(w.numpy(), copy=True) for w in model.weights]


def check_pruning_properties(model, selection: dict, removed: dict[str, int], tmp_dir=None) -> dict:
    """Assert every fuzzing property for one model and selection.

    1. `remove_filters` equals `mask_filters` on a copy within `TOL` (exact groups).
    2. The original model is bit-for-bit unchanged (weights and config) by
       `analyze`, `remove_filters`.
    3. `analyze` of the result reports each touched group at its original size
       minus the removed channels; other groups keep their size.
    4. The result saves to `.keras` and loads in plain Keras with identical outputs.

    Returns a few figures about the case (groups, parameters before/after).
    """
    config0, weights0 = _config_and_weights(model)
    graph = kp.analyze(model)
    sizes0 = {g.layers[0]: g.size for g in graph.groups}
    exact = all(g.exact for g in graph.groups)
    pruned = kp.remove_filters(model, selection, graph=graph)
    config1, weights1 = _config_and_weights(model)
    assert config1 == config0, "remove_filters changed the original model's config"
    assert len(weights1) == len(weights0)
    for a, b in zip(weights0, weights1):
        assert a.dtype == b.dtype and np.array_equal(a, b), "remove_filters changed the original's weights"

    x = random_input(model, batch=2, seed=1)
    masked = keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    kp.mask_filters(masked, selection)
    if exact:
        diff = max_output_difference(pruned, masked, x)
        assert diff < TOL, f"removed vs masked differ by {diff:.3g}"
    if selection:
        assert pruned.count_params() < model.count_params()

    new_graph = kp.analyze(pruned)
    # A coupler can only split a group (a gate left with one channel is read as a broadcast).
    assert len(new_graph.groups) >= len(graph.groups)
    for first, size in sizes0.items():
        got = new_graph.group_of(first).size
        want = size - removed.get(first, 0)
        assert got == want, f"group of '{first}': expected {want} channels after removal, analyze says {got}"

    with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
        path = Path(tmp) / "pruned.keras"
        pruned.save(path)
        loaded = keras.saving.load_model(path)
        diff = max_output_difference(pruned, loaded, x)
        assert diff == 0.0, f"saved and loaded model differs by {diff:.3g}"
    return {
        "groups": len(graph.groups),
        "prunable": len(graph.prunable_groups),
        "touched": len(removed),
        "params_before": model.count_params(),
        "params_after": pruned.count_params(),
    }


# -- attention and recurrent blocks (sequences: 1-D, channels_last, (T, C)) --------------------------
def _is_sequence(c: _Ctx) -> bool:
    return c.dims == 1 and c.fmt == "channels_last"


def _block_attention(c: _Ctx, x):
    """Self-attention (optionally gated, bias-free), residual or not, optionally followed by a residual FFN."""
    if not _is_sequence(c):
        return _block_conv(c, x)
    ch = c.chans(x)
    # key_dim == value_dim (the default): one group, as Keras's JAX backend needs (rules/attention.py,
    # KERAS_JAX_HEAD_DIMS). Unequal sizes that pruning makes equal become one group in the pruned
    # model, which the group-count property cannot follow; tests/test_attention.py covers them.
    mha = L.MultiHeadAttention(
        c.d.integer(1, 3), c.d.integer(1, 4), use_bias=c.d.boolean(), use_gate=c.d.boolean(), name=c.name("mha")
    )
    a = mha(x, x)
    x = L.Add(name=c.name("attn_res"))([x, a]) if c.d.boolean() else a
    if c.d.boolean():
        f = L.Dense(c.width(), activation=c.d.choice(["gelu", "relu", None]), name=c.name("ff1"))(x)
        x = L.Add(name=c.name("ff_res"))([x, L.Dense(ch, name=c.name("ff2"))(f)])
    return x


def _block_recurrent(c: _Ctx, x):
    """LSTM, GRU, SimpleRNN or a Bidirectional wrapper, returning sequences."""
    if not _is_sequence(c):
        return _block_conv(c, x)
    kind = c.d.choice(["lstm", "gru", "gru_reset_before", "simple", "bidirectional"])
    units = c.d.integer(2, 6)
    if kind == "bidirectional":
        inner = c.d.choice([L.LSTM, L.GRU, L.SimpleRNN])(units, return_sequences=True)
        merge = c.d.choice(["concat", "sum", "ave", "mul"])
        return L.Bidirectional(inner, merge_mode=merge, name=c.name("birnn"))(x)
    if kind == "lstm":
        return L.LSTM(units, return_sequences=True, name=c.name("lstm"))(x)
    if kind == "simple":
        return L.SimpleRNN(units, return_sequences=True, name=c.name("rnn"))(x)
    reset_after = kind == "gru"
    return L.GRU(units, return_sequences=True, reset_after=reset_after, name=c.name("gru"))(x)


BLOCKS["attention"] = _block_attention
BLOCKS["recurrent"] = _block_recurrent


# ======================================================================================
# Composite layers (issue 17, tracing): a `Layer` subclass built from sublayers and
# `keras.ops`, the way keras_hub writes its blocks. kerasprune has no rule for it and
# traces its `call` (kerasprune.tracing); the removed model holds its pruned graph as
# a nested Functional model when touched, the block itself when not.
# ======================================================================================
@keras.saving.register_keras_serializable(package="kerasprune_fuzz")
class FuzzBlock(keras.layers.Layer):
    """conv -> (BN) -> relu -> conv, plus the input (`x + y`), in any data format and rank."""

    def __init__(self, filters, channels, dims=2, data_format="channels_last", use_bn=True, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.channels, self.dims = filters, channels, dims
        self.data_format, self.use_bn = data_format, use_bn
        conv = getattr(L, f"Conv{dims}D")
        self.c1 = conv(filters, 3, padding="same", data_format=data_format, name="c1")
        axis = 1 if data_format == "channels_first" else -1
        self.bn = L.BatchNormalization(axis=axis, name="bn") if use_bn else None
        self.c2 = conv(channels, 1, data_format=data_format, name="c2")

    def build(self, input_shape):
        self.c1.build(input_shape)
        inner = self.c1.compute_output_shape(input_shape)
        if self.bn is not None:
            self.bn.build(inner)
        self.c2.build(inner)

    def call(self, x, training=None):
        y = self.c1(x)
        if self.bn is not None:  # a Python branch on the config: traced as written
            y = self.bn(y, training=training)
        return x + self.c2(keras.ops.relu(y))

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "channels": self.channels,
            "dims": self.dims,
            "data_format": self.data_format,
            "use_bn": self.use_bn,
        }


def _block_composite(c: _Ctx, x):
    if c.chans(x) > MAX_CHANNELS:  # see KERAS_CHANNELS_FIRST_BIAS_BUG
        return _block_conv(c, x)
    block = FuzzBlock(c.width(), c.chans(x), c.dims, c.fmt, use_bn=c.d.boolean(), name=c.name("composite"))
    return block(x)


BLOCKS["composite"] = _block_composite


# =============================================================================================
# keras.ops vocabulary: element-wise ops with constants, squeeze-excite written with ops,
# CSP-style splits and channel slices, reductions with keepdims, spatial pads, transposes.
# Rules: src/kerasprune/rules/ops.py and ops_index.py.
# =============================================================================================
def _keep_one_per_part(graph, g, picked: set) -> None:
    """Keep a channel of every slice or split of group `g` (removal may not empty a tensor)."""
    from kerasprune.plan import group_parts

    for gid, _, chans in group_parts(graph):
        own = set(chans.tolist())
        if gid == g.id and own <= picked:
            picked.discard(min(own))


def _ops_spatial(c: _Ctx) -> tuple[int, ...]:
    return tuple(range(2, 2 + c.dims)) if c.fmt == "channels_first" else tuple(range(1, 1 + c.dims))


def _ops_per_channel(c: _Ctx, values: np.ndarray) -> np.ndarray:
    """A per-channel constant shaped to broadcast against the feature map."""
    values = values.astype("float32")
    return values.reshape((-1,) + (1,) * c.dims) if c.fmt == "channels_first" else values


def _block_ops_elementwise(c: _Ctx, x):
    ch = c.chans(x)
    kind = c.d.choice(["relu", "swish", "affine", "where", "minmax", "residual"])
    if kind == "relu":
        return keras.ops.relu(x)
    if kind == "swish":
        return keras.activations.swish(x)
    if kind == "affine":  # per-channel scale and shift: sliced with the channels
        scale = _ops_per_channel(c, np.linspace(0.5, 1.5, ch))
        return x * scale + _ops_per_channel(c, np.linspace(-0.5, 0.5, ch))
    if kind == "where":
        return keras.ops.where(x > 0.0, x, 0.1 * x)
    if kind == "minmax":
        return keras.ops.maximum(x, 0.0) - keras.ops.minimum(x, -0.5) * 0.5
    y = _act(c, _bn(c, _conv(c, x, filters=ch)))
    return keras.ops.add(x, y) if c.d.boolean() else keras.ops.multiply(y, keras.ops.sigmoid(x))


def _block_ops_se(c: _Ctx, x):
    ch, spatial, keep = c.chans(x), _ops_spatial(c), c.d.boolean()
    s = keras.ops.mean(x, axis=spatial, keepdims=keep) if c.d.boolean() else keras.ops.max(x, axis=spatial, keepdims=keep)
    if not keep:  # ops.reshape(gap, (-1, 1, 1, C)): the channel entry is rewritten on removal
        ones = (1,) * c.dims
        s = keras.ops.reshape(s, (-1, ch) + ones if c.fmt == "channels_first" else (-1,) + ones + (ch,))
    s = c.cls("Conv")(c.d.integer(1, 4), 1, data_format=c.fmt, activation="relu", name=c.name("ops_se_reduce"))(s)
    s = keras.ops.sigmoid(c.cls("Conv")(ch, 1, data_format=c.fmt, name=c.name("ops_se_expand"))(s))
    return x * s if c.d.boolean() else x - s


def _block_ops_split(c: _Ctx, x):
    ch = c.chans(x)
    if ch < 2:
        return _block_ops_elementwise(c, x)
    k = c.d.integer(1, ch - 1)
    ax = 1 if c.fmt == "channels_first" else len(x.shape) - 1
    if c.d.boolean():
        a, b = keras.ops.split(x, [k], axis=ax)
    else:  # slicing along the channel axis: x[..., :k], x[..., k:]
        lead = (slice(None),) if c.fmt == "channels_first" else (Ellipsis,)
        a, b = x[lead + (slice(None, k),)], x[lead + (slice(k, None),)]
    b = _act(c, _conv(c, b, filters=c.d.integer(1, max(1, MAX_CHANNELS - k))))
    return keras.ops.concatenate([a, b] if c.d.boolean() else [b, a], axis=ax)


def _block_ops_spatial(c: _Ctx, x):
    kind = c.d.choice(["center", "pad", "transpose"])
    spatial = _ops_spatial(c)
    if kind == "center":  # a reduction over spatial axes with keepdims
        return x - keras.ops.max(x, axis=spatial, keepdims=True)
    if kind == "pad" and c.size(x) <= 12:
        pads = [(0, 0)] * len(x.shape)
        for a in spatial:
            pads[a] = (1, 1)
        return keras.ops.pad(x, pads)
    # channels to the front and back again, with an element-wise op in between
    ax = 1 if c.fmt == "channels_first" else len(x.shape) - 1
    y = keras.ops.moveaxis(x, ax, 1 if ax != 1 else -1)
    return keras.ops.moveaxis(keras.ops.tanh(y), 1 if ax != 1 else -1, ax)


BLOCKS["ops_elementwise"] = _block_ops_elementwise
BLOCKS["ops_se"] = _block_ops_se
BLOCKS["ops_split"] = _block_ops_split
BLOCKS["ops_spatial"] = _block_ops_spatial
