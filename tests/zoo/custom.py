"""Models written with `keras.ops` in the Functional API, and subclassed `keras.Model`s."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from zoo.registry import example

serializable = keras.saving.register_keras_serializable(package="zoo")
GUIDES = "https://keras.io/guides/"


@example(
    "keras.ops / subclassed",
    "The Functional API with keras.ops calls on symbolic tensors (squeeze-excite, pads, activations)",
    GUIDES + "functional_api/",
    notes="a residual CNN whose activations, padding, squeeze-excite and scaling are keras.ops calls",
)
def ops_functional():
    """`ops.relu`, `ops.pad` on spatial axes, SE with `ops.mean(keepdims)`/`ops.sigmoid`/multiply, `x * 0.5`."""
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, padding="same")(inputs)
    x = ops.relu(x)
    skip = x
    y = ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    y = layers.Conv2D(8, 3, padding="valid")(y)
    y = layers.BatchNormalization()(y)
    y = ops.relu(y)
    s = ops.mean(y, axis=(1, 2), keepdims=True)
    s = layers.Conv2D(4, 1, activation="relu")(s)
    s = layers.Conv2D(8, 1)(s)
    y = y * ops.sigmoid(s)
    x = skip + y * 0.5
    x = ops.relu(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(4)(x)
    return keras.Model(inputs, outputs, name="ops_functional")


@example(
    "keras.ops / subclassed",
    "keras.ops channel split (CSP-style): ops.split and slicing along channels",
    "https://keras.io/api/ops/numpy/#split-function",
    notes="the CSPNet pattern: split the channels in two, convolve one half, concatenate",
)
def ops_split():
    """`ops.split` along channels, a conv on one half, `ops.concatenate`, Dense head."""
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    a, b = ops.split(x, 2, axis=-1)
    b = layers.Conv2D(4, 3, padding="same", activation="relu")(b)
    x = ops.concatenate([a, b], axis=-1)
    x = layers.Conv2D(8, 1, activation="relu")(x)
    x = layers.GlobalMaxPooling2D()(x)
    outputs = layers.Dense(3)(x)
    return keras.Model(inputs, outputs, name="ops_split")


@serializable
class SubclassedCNN(keras.Model):
    """The guide's subclassed model: layers made in __init__, wired in call."""

    def __init__(self, num_classes=10, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.conv1 = layers.Conv2D(8, 3, activation="relu")
        self.bn1 = layers.BatchNormalization()
        self.conv2 = layers.Conv2D(12, 3, activation="relu")
        self.pool = layers.GlobalAveragePooling2D()
        self.dense1 = layers.Dense(16, activation="relu")
        self.dropout = layers.Dropout(0.5)
        self.classifier = layers.Dense(num_classes)

    def call(self, inputs, training=False):
        x = self.conv1(inputs)
        x = self.bn1(x, training=training)
        x = self.conv2(x)
        x = self.pool(x)
        x = self.dense1(x)
        x = self.dropout(x, training=training)
        return self.classifier(x)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


def _images_16(model, batch, seed):
    return np.random.default_rng(seed).normal(size=(batch, 16, 16, 3)).astype("float32")


@example(
    "keras.ops / subclassed",
    "Making new layers and models via subclassing (a subclassed keras.Model)",
    GUIDES + "making_new_layers_and_models_via_subclassing/",
    sample=_images_16,
)
def subclassed_cnn():
    """A `keras.Model` subclass with `call`; built by calling it once."""
    model = SubclassedCNN(10)
    model(np.zeros((1, 16, 16, 3), "float32"))
    return model


@serializable
class CustomModel(keras.Model):
    """The 'customizing what happens in fit' guide's model: a Functional model with its own train_step."""

    def train_step(self, data):
        return super().train_step(data)


@example(
    "keras.ops / subclassed",
    "Customizing what happens in fit() (a Functional model of a keras.Model subclass)",
    GUIDES + "custom_train_step_in_tensorflow/",
)
def functional_subclass():
    """`CustomModel(inputs, outputs)`: Functional wiring, a subclass of keras.Model."""
    inputs = keras.Input(shape=(12,))
    x = layers.Dense(16, activation="relu")(inputs)
    x = layers.Dense(8, activation="relu")(x)
    outputs = layers.Dense(1)(x)
    return CustomModel(inputs, outputs, name="custom_model")


@serializable
class MLPBlock(keras.layers.Layer):
    """The subclassing guide's MLPBlock: a layer made of Dense layers (a composite layer)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.linear_1 = layers.Dense(16)
        self.linear_2 = layers.Dense(16)
        self.linear_3 = layers.Dense(1)

    def call(self, inputs):
        x = self.linear_1(inputs)
        x = keras.activations.relu(x)
        x = self.linear_2(x)
        x = keras.activations.relu(x)
        return self.linear_3(x)


@example(
    "keras.ops / subclassed",
    "Making new layers and models via subclassing (MLPBlock, a layer of layers)",
    GUIDES + "making_new_layers_and_models_via_subclassing/",
    notes="MLPBlock used inside a Functional model after a Dense feature layer",
)
def composite_block():
    """A composite layer (Dense layers called in its call) between Functional layers."""
    inputs = keras.Input((12,))
    x = layers.Dense(16, activation="relu")(inputs)
    outputs = MLPBlock()(x)
    return keras.Model(inputs, outputs, name="composite_block")
