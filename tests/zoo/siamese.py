"""Siamese and triplet networks: small versions of keras.io metric-learning examples."""

from __future__ import annotations

import keras
from keras import layers, ops

from zoo.registry import KERAS_IO, example

serializable = keras.saving.register_keras_serializable(package="zoo")


@serializable
class DistanceLayer(layers.Layer):
    """Computes the distance between the anchor and positive embeddings, and the anchor and negative ones."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def call(self, anchor, positive, negative):
        ap_distance = ops.sum(ops.square(anchor - positive), -1)
        an_distance = ops.sum(ops.square(anchor - negative), -1)
        return (ap_distance, an_distance)


@example(
    "siamese",
    "Image similarity estimation using a Siamese Network with a triplet loss",
    KERAS_IO + "vision/siamese_network/",
    notes="the ResNet50 embedding base replaced by a small CNN; 32x32 images; the example's head kept",
)
def siamese_triplet():
    """One embedding model called on anchor/positive/negative (shared), custom DistanceLayer with two outputs."""
    target_shape = (32, 32)
    base_input = keras.Input(target_shape + (3,))
    b = layers.Conv2D(8, 3, strides=2, activation="relu")(base_input)
    b = layers.Conv2D(12, 3, strides=2, activation="relu")(b)
    base_cnn = keras.Model(base_input, b, name="base_cnn")
    flatten = layers.Flatten()(base_cnn.output)
    dense1 = layers.Dense(16, activation="relu")(flatten)
    dense1 = layers.BatchNormalization()(dense1)
    dense2 = layers.Dense(12, activation="relu")(dense1)
    dense2 = layers.BatchNormalization()(dense2)
    output = layers.Dense(12)(dense2)
    embedding = keras.Model(base_cnn.input, output, name="Embedding")
    anchor_input = layers.Input(name="anchor", shape=target_shape + (3,))
    positive_input = layers.Input(name="positive", shape=target_shape + (3,))
    negative_input = layers.Input(name="negative", shape=target_shape + (3,))
    preprocess = keras.applications.resnet.preprocess_input
    distances = DistanceLayer()(
        embedding(preprocess(anchor_input)),
        embedding(preprocess(positive_input)),
        embedding(preprocess(negative_input)),
    )
    return keras.Model(inputs=[anchor_input, positive_input, negative_input], outputs=distances, name="siamese")


@keras.saving.register_keras_serializable(package="zoo")
def euclidean_distance(vects):
    x, y = vects
    sum_square = ops.sum(ops.square(x - y), axis=1, keepdims=True)
    return ops.sqrt(ops.maximum(sum_square, keras.backend.epsilon()))


@example(
    "siamese",
    "Image similarity estimation using a Siamese Network with a contrastive loss",
    KERAS_IO + "vision/siamese_contrastive/",
    notes="as in the example (it is already small)",
)
def siamese_contrastive():
    """Shared tower (BN on the input, tanh convs, average pooling), a Lambda euclidean distance, BN, sigmoid Dense."""
    input = keras.layers.Input((28, 28, 1))
    x = keras.layers.BatchNormalization()(input)
    x = keras.layers.Conv2D(4, (5, 5), activation="tanh")(x)
    x = keras.layers.AveragePooling2D(pool_size=(2, 2))(x)
    x = keras.layers.Conv2D(16, (5, 5), activation="tanh")(x)
    x = keras.layers.AveragePooling2D(pool_size=(2, 2))(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dense(10, activation="tanh")(x)
    embedding_network = keras.Model(input, x)
    input_1 = keras.layers.Input((28, 28, 1))
    input_2 = keras.layers.Input((28, 28, 1))
    tower_1 = embedding_network(input_1)
    tower_2 = embedding_network(input_2)
    merge_layer = keras.layers.Lambda(euclidean_distance, output_shape=(1,))([tower_1, tower_2])
    normal_layer = keras.layers.BatchNormalization()(merge_layer)
    output_layer = keras.layers.Dense(1, activation="sigmoid")(normal_layer)
    return keras.Model(inputs=[input_1, input_2], outputs=output_layer, name="siamese_contrastive")


@example(
    "siamese",
    "Metric learning for image similarity search (cosine similarity with a Dot layer)",
    KERAS_IO + "vision/metric_learning/",
    notes="the example's embedding CNN; the pair scored with layers.Dot(normalize=True) as in similarity heads",
)
def siamese_dot():
    """Shared embedding CNN (Conv2D/GAP/Dense, L2-normalized with UnitNormalization), pair scored by Dot."""
    inputs = layers.Input(shape=(32, 32, 3))
    x = layers.Conv2D(filters=8, kernel_size=3, strides=2, activation="relu")(inputs)
    x = layers.Conv2D(filters=12, kernel_size=3, strides=2, activation="relu")(x)
    x = layers.Conv2D(filters=16, kernel_size=3, strides=2, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    embeddings = layers.Dense(units=8, activation=None)(x)
    embeddings = layers.UnitNormalization()(embeddings)
    tower = keras.Model(inputs, embeddings, name="embedding")
    a, b = layers.Input((32, 32, 3)), layers.Input((32, 32, 3))
    similarity = layers.Dot(axes=1, normalize=True)([tower(a), tower(b)])
    return keras.Model([a, b], similarity, name="siamese_dot")
