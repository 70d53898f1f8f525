"""Small model builders shared by the core tests (one topology per rule family)."""

from __future__ import annotations

import keras
from keras import layers as L

from kerasprune.testing import randomize_batchnorm, randomize_weights


def finish(inputs, outputs, seed: int = 0, name: str | None = None) -> keras.Model:
    model = keras.Model(inputs, outputs, name=name)
    randomize_weights(model, seed)
    randomize_batchnorm(model, seed + 1)
    return model


def conv_bn_chain(data_format="channels_last", rank=2):
    conv = {1: L.Conv1D, 2: L.Conv2D, 3: L.Conv3D}[rank]
    size = {1: (16,), 2: (8, 8), 3: (6, 6, 6)}[rank]
    axis = 1 if data_format == "channels_first" else -1
    shape = (3, *size) if data_format == "channels_first" else (*size, 3)
    i = keras.Input(shape)
    x = conv(8, 3, padding="same", data_format=data_format, name="c1")(i)
    x = L.BatchNormalization(axis=axis, name="bn1")(x)
    x = L.ReLU()(x)
    x = conv(6, 3, padding="same", data_format=data_format, name="c2")(x)
    x = L.BatchNormalization(axis=axis, name="bn2")(x)
    x = L.Activation("sigmoid")(x)
    x = L.Flatten(data_format=data_format)(x)
    return finish(i, L.Dense(4, name="head")(x))


def residual():
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="stem")(i)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU()(x)
    for b in range(2):
        y = L.Conv2D(6, 1, name=f"b{b}_a")(x)
        y = L.BatchNormalization(name=f"b{b}_a_bn")(y)
        y = L.ReLU()(y)
        y = L.Conv2D(8, 3, padding="same", name=f"b{b}_b")(y)
        y = L.BatchNormalization(name=f"b{b}_b_bn")(y)
        x = L.Add(name=f"b{b}_add")([x, y])
        x = L.ReLU()(x)
    x = L.GlobalAveragePooling2D()(x)
    return finish(i, L.Dense(3, name="head")(x))


def concat_depthwise():
    i = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same", name="a")(i)
    b = L.Conv2D(5, 1, name="b")(i)
    x = L.Concatenate(name="cat")([a, b, a])
    x = L.BatchNormalization(name="cat_bn")(x)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)
    x = L.PReLU(shared_axes=[1, 2], name="prelu")(x)
    x = L.SeparableConv2D(6, 3, depth_multiplier=2, padding="same", name="sep")(x)
    x = L.MaxPooling2D(2)(x)
    x = L.Conv2DTranspose(5, 3, strides=2, padding="same", name="tconv")(x)
    x = L.ZeroPadding2D(1)(x)
    x = L.Cropping2D(1)(x)
    x = L.UpSampling2D()(x)
    x = L.AveragePooling2D(2)(x)
    x = L.GlobalMaxPooling2D(keepdims=True)(x)
    x = L.Flatten()(x)
    return finish(i, L.Dense(3, name="head")(x))


def squeeze_excite():
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="c")(i)
    x = L.BatchNormalization(name="c_bn")(x)
    x = L.Activation("swish")(x)
    s = L.GlobalAveragePooling2D(name="gap")(x)
    s = L.Reshape((1, 1, 8), name="se_reshape")(s)
    s = L.Conv2D(2, 1, activation="relu", name="se_reduce")(s)
    s = L.Conv2D(8, 1, activation="sigmoid", name="se_expand")(s)
    x = L.Multiply(name="se_mul")([x, s])
    h = x + 3.0  # hard-sigmoid style symbolic ops
    h = L.ReLU(6.0)(h) * (1.0 / 6.0)
    x = L.Multiply(name="hswish")([x, h])
    x = L.Conv2D(4, 1, name="proj")(x)
    x = L.LayerNormalization(name="ln")(x)
    x = L.Dense(5, name="dense4d")(x)
    x = L.GlobalAveragePooling2D()(x)
    return finish(i, L.Dense(3, name="head")(x))


def dense_mlp():
    i = keras.Input((10,))
    x = L.Dense(12, name="d1")(i)
    x = L.BatchNormalization(name="d1_bn")(x)
    x = L.Dropout(0.3)(x)
    x = L.Dense(7, activation="tanh", name="d2")(x)
    x = L.GaussianNoise(0.1)(x)
    return finish(i, L.Dense(2, name="head")(x))


def sequential_cnn():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(6, 3, name="s1"),
            L.BatchNormalization(name="s1_bn"),
            L.ReLU(),
            L.Conv2D(5, 3, name="s2"),
            L.SpatialDropout2D(0.2),
            L.Flatten(),
            L.Dense(3, name="head"),
        ]
    )
    randomize_weights(model, 3)
    randomize_batchnorm(model, 4)
    return model


def nested_and_shared():
    inner_in = keras.Input((8, 8, 4))
    y = L.Conv2D(6, 3, padding="same", name="inner_conv")(inner_in)
    y = L.BatchNormalization(name="inner_bn")(y)
    inner = keras.Model(inner_in, L.ReLU()(y), name="block")
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 1, name="pre")(i)
    x = inner(x)
    shared = L.Conv2D(5, 3, padding="same", name="shared")
    p, q = L.Conv2D(6, 1, name="p")(x), L.Conv2D(6, 1, name="q")(x)
    x = L.Add()([shared(p), shared(q)])
    x = L.GlobalAveragePooling2D()(x)
    return finish(i, L.Dense(3, name="head")(x))


def two_conv_classifier(channels: int = 3, classes: int = 3, softmax: bool = False, bn_seed: int = 1):
    """conv-BN-ReLU x2 -> GAP -> Dense, seeded, with random BN statistics (training tests)."""
    keras.utils.set_random_seed(0)
    i = keras.Input((8, 8, channels))
    x = L.Conv2D(8, 3, padding="same", name="c1")(i)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU()(x)
    x = L.Conv2D(8, 3, padding="same", name="c2")(x)
    x = L.BatchNormalization(name="bn2")(x)
    x = L.ReLU()(x)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(i, L.Dense(classes, activation="softmax" if softmax else None, name="head")(x))
    randomize_batchnorm(model, seed=bn_seed)
    return model


ALL = {
    "conv_bn_chain": conv_bn_chain,
    "conv1d": lambda: conv_bn_chain(rank=1),
    "conv3d": lambda: conv_bn_chain(rank=3),
    "residual": residual,
    "concat_depthwise": concat_depthwise,
    "squeeze_excite": squeeze_excite,
    "dense_mlp": dense_mlp,
    "sequential_cnn": sequential_cnn,
    "nested_and_shared": nested_and_shared,
}


def scale_layer_source(package: str) -> str:
    """Source of a module a user would pass to `--import`: a registered per-channel `Scale`
    layer and its pruning rule (serialization package `package`, one per test file)."""
    return f'''
import keras
import kerasprune as kp


@keras.saving.register_keras_serializable(package="{package}")
class Scale(keras.layers.Layer):
    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(self.channels,), initializer="ones", name="scale")

    def call(self, x):
        return x * self.scale

    def get_config(self):
        return {{**super().get_config(), "channels": self.channels}}


kp.register_rule(Scale, kp.ChannelParams(("scale",), config_key="channels"))
'''
