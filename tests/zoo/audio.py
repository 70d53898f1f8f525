"""Audio: small versions of keras.io audio examples."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from zoo.registry import KERAS_IO, example


def _residual_block(x, filters, conv_num=3, activation="relu"):
    s = keras.layers.Conv1D(filters, 1, padding="same")(x)
    for _ in range(conv_num - 1):
        x = keras.layers.Conv1D(filters, 3, padding="same")(x)
        x = keras.layers.Activation(activation)(x)
    x = keras.layers.Conv1D(filters, 3, padding="same")(x)
    x = keras.layers.Add()([x, s])
    x = keras.layers.Activation(activation)(x)
    return keras.layers.MaxPool1D(pool_size=2, strides=2)(x)


@example(
    "audio",
    "Speaker recognition (Conv1D residual blocks on the FFT of waveforms)",
    KERAS_IO + "audio/speaker_recognition_using_cnn/",
    notes="filters 16..128 -> 4..12, 256-bin input, 3 blocks",
)
def speaker_recognition():
    """Conv1D residual blocks with 1x1 shortcuts, MaxPool1D, AveragePooling1D, Flatten, Dense head."""
    inputs = keras.layers.Input(shape=(256, 1), name="input")
    x = _residual_block(inputs, 4, 2)
    x = _residual_block(x, 8, 2)
    x = _residual_block(x, 12, 3)
    x = keras.layers.AveragePooling1D(pool_size=3, strides=3)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    x = keras.layers.Dense(8, activation="relu")(x)
    outputs = keras.layers.Dense(5, activation="softmax", name="output")(x)
    return keras.models.Model(inputs=inputs, outputs=outputs, name="speaker_recognition")


def _spectrogram_sample(model, batch, seed):
    return np.random.default_rng(seed).normal(size=(batch, 24, 33)).astype("float32")


@example(
    "audio",
    "Automatic Speech Recognition using CTC (DeepSpeech2-like)",
    KERAS_IO + "audio/ctc_asr/",
    sample=_spectrogram_sample,
    notes="rnn_units 512 -> 8, 2 recurrent layers, 33 FFT bins; time stays None as in the example",
)
def deepspeech2():
    """Reshape to an image, two Conv2D/BN/ReLU, Reshape back with None time, Bidirectional GRUs, Dense."""
    input_dim, output_dim, rnn_layers, rnn_units = 33, 10, 2, 8
    input_spectrogram = layers.Input((None, input_dim), name="input")
    x = layers.Reshape((-1, input_dim, 1), name="expand_dim")(input_spectrogram)
    x = layers.Conv2D(filters=8, kernel_size=[11, 41], strides=[2, 2], padding="same", use_bias=False,
                      name="conv_1")(x)  # fmt: skip
    x = layers.BatchNormalization(name="conv_1_bn")(x)
    x = layers.ReLU(name="conv_1_relu")(x)
    x = layers.Conv2D(filters=8, kernel_size=[11, 21], strides=[1, 2], padding="same", use_bias=False,
                      name="conv_2")(x)  # fmt: skip
    x = layers.BatchNormalization(name="conv_2_bn")(x)
    x = layers.ReLU(name="conv_2_relu")(x)
    x = layers.Reshape((-1, x.shape[-2] * x.shape[-1]))(x)
    for i in range(1, rnn_layers + 1):
        recurrent = layers.GRU(units=rnn_units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                               return_sequences=True, reset_after=True, name=f"gru_{i}")  # fmt: skip
        x = layers.Bidirectional(recurrent, name=f"bidirectional_{i}", merge_mode="concat")(x)
        if i < rnn_layers:
            x = layers.Dropout(rate=0.5)(x)
    x = layers.Dense(units=rnn_units * 2, name="dense_1")(x)
    x = layers.ReLU(name="dense_1_relu")(x)
    x = layers.Dropout(rate=0.5)(x)
    output = layers.Dense(units=output_dim + 1, activation="softmax")(x)
    return keras.Model(input_spectrogram, output, name="DeepSpeech_2")


def _waveform_sample(model, batch, seed):
    return np.random.default_rng(seed).normal(size=(batch, 2048, 1)).astype("float32")


@example(
    "audio",
    "Audio classification with the STFTSpectrogram layer (the 1-D model)",
    KERAS_IO + "audio/stft/",
    sample=_waveform_sample,
    notes="filters 64..512 -> 4..16, frame 64/24 samples; waveform length None as in the example",
)
def stft_conv1d():
    """Non-trainable STFTSpectrogram on raw waveforms, Conv1D VGG-like stack with LayerNormalization."""
    return keras.Sequential(
        [
            layers.InputLayer((None, 1)),
            layers.STFTSpectrogram(mode="log", frame_length=64, frame_step=24, trainable=False),
            layers.Conv1D(4, 8, activation="relu"),
            layers.Conv1D(8, 4, activation="relu"),
            layers.LayerNormalization(),
            layers.MaxPooling1D(4),
            layers.Conv1D(8, 3, activation="relu"),
            layers.Conv1D(16, 3, activation="relu"),
            layers.LayerNormalization(),
            layers.Dropout(0.5),
            layers.GlobalMaxPooling1D(),
            layers.Dense(16, activation="relu"),
            layers.Dense(16, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(10, activation="softmax"),
        ],
        name="model_1d_non_trainble_stft",
    )
