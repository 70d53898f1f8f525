"""3-D data: small versions of keras.io volumetric and video examples."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from zoo.registry import KERAS_IO, example


@example(
    "3-D",
    "3D image classification from CT scans",
    KERAS_IO + "vision/3D_image_classification/",
    notes="128x128x64 -> 48x48x48, filters 64..256 -> 4..12",
)
def ct_classifier():
    """Conv3D/MaxPool3D/BatchNormalization stages, GlobalAveragePooling3D, Dense, Dropout, sigmoid Dense."""
    inputs = keras.Input((48, 48, 48, 1))
    x = layers.Conv3D(filters=4, kernel_size=3, activation="relu")(inputs)
    x = layers.MaxPool3D(pool_size=2)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Conv3D(filters=4, kernel_size=3, activation="relu")(x)
    x = layers.MaxPool3D(pool_size=2)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Conv3D(filters=8, kernel_size=3, activation="relu")(x)
    x = layers.MaxPool3D(pool_size=2)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Conv3D(filters=12, kernel_size=3, activation="relu")(x)
    x = layers.MaxPool3D(pool_size=2)(x)
    x = layers.BatchNormalization()(x)
    x = layers.GlobalAveragePooling3D()(x)
    x = layers.Dense(units=16, activation="relu")(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(units=1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs, name="3dcnn")


def _frames(model, batch, seed):
    return np.random.default_rng(seed).normal(size=(batch, 4, 16, 16, 1)).astype("float32")


@example(
    "3-D",
    "Next-frame video prediction with Convolutional LSTMs",
    KERAS_IO + "vision/conv_lstm/",
    sample=_frames,
    notes="filters 64 -> 6, 16x16 frames; the frame count stays None as in the example",
)
def conv_lstm_next_frame():
    """Stacked ConvLSTM2D (return_sequences) with BatchNormalization, Conv3D sigmoid output."""
    inp = layers.Input(shape=(None, 16, 16, 1))
    x = layers.ConvLSTM2D(filters=6, kernel_size=(5, 5), padding="same", return_sequences=True,
                          activation="relu")(inp)  # fmt: skip
    x = layers.BatchNormalization()(x)
    x = layers.ConvLSTM2D(filters=6, kernel_size=(3, 3), padding="same", return_sequences=True,
                          activation="relu")(x)  # fmt: skip
    x = layers.BatchNormalization()(x)
    x = layers.ConvLSTM2D(filters=6, kernel_size=(1, 1), padding="same", return_sequences=True,
                          activation="relu")(x)  # fmt: skip
    x = layers.Conv3D(filters=1, kernel_size=(3, 3, 3), activation="sigmoid", padding="same")(x)
    return keras.models.Model(inp, x, name="conv_lstm")


@example(
    "3-D",
    "Video classification with a CNN-RNN architecture (TimeDistributed CNN + GRU)",
    KERAS_IO + "vision/video_classification/",
    sample=_frames,
    notes="the example's pretrained InceptionV3 features replaced by a small TimeDistributed CNN",
)
def video_cnn_rnn():
    """TimeDistributed Conv2D/pooling feature extractor, GRU(return_sequences), GRU, Dropout, Dense head."""
    frames = keras.Input((None, 16, 16, 1))
    x = layers.TimeDistributed(layers.Conv2D(8, 3, activation="relu"))(frames)
    x = layers.TimeDistributed(layers.MaxPooling2D())(x)
    x = layers.TimeDistributed(layers.Conv2D(12, 3, activation="relu"))(x)
    x = layers.TimeDistributed(layers.GlobalAveragePooling2D())(x)
    x = layers.GRU(8, return_sequences=True)(x)
    x = layers.GRU(4)(x)
    x = layers.Dropout(0.4)(x)
    x = layers.Dense(8, activation="relu")(x)
    output = layers.Dense(5, activation="softmax")(x)
    return keras.Model(frames, output, name="video_cnn_rnn")
