"""Time series: small versions of keras.io time-series examples."""

from __future__ import annotations

import keras
from keras import layers

from zoo.registry import KERAS_IO, example


@example(
    "time series",
    "Timeseries classification from scratch (fully convolutional network)",
    KERAS_IO + "timeseries/timeseries_classification_from_scratch/",
    notes="64 filters -> 8/12/16, 64 steps",
)
def fcn_classifier():
    """Three Conv1D/BatchNormalization/ReLU blocks, GlobalAveragePooling1D, softmax Dense."""
    input_layer = keras.layers.Input((64, 1))
    x = input_layer
    for f in (8, 12, 16):
        x = keras.layers.Conv1D(filters=f, kernel_size=3, padding="same")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    gap = keras.layers.GlobalAveragePooling1D()(x)
    output_layer = keras.layers.Dense(2, activation="softmax")(gap)
    return keras.models.Model(inputs=input_layer, outputs=output_layer, name="fcn_classifier")


@example(
    "time series",
    "Timeseries forecasting for weather prediction (LSTM)",
    KERAS_IO + "timeseries/timeseries_weather_forecasting/",
    notes="a Dense feature projection before the LSTM so that channels feed it; 24 steps, 7 features",
)
def lstm_forecaster():
    """Dense projection, LSTM(32 -> 8), Dense(1) regression head."""
    inputs = keras.layers.Input(shape=(24, 7))
    x = keras.layers.Dense(12, activation="relu")(inputs)
    lstm_out = keras.layers.LSTM(8)(x)
    outputs = keras.layers.Dense(1)(lstm_out)
    return keras.Model(inputs=inputs, outputs=outputs, name="lstm_forecaster")


@example(
    "time series",
    "Traffic/sequence forecasting with stacked GRU (a Conv1D front end, GRU, Dense head)",
    KERAS_IO + "timeseries/timeseries_weather_forecasting/",
    notes="the weather example's LSTM swapped for a stacked GRU with a Conv1D front end (a common variant)",
)
def gru_forecaster():
    """Conv1D feature extractor, two stacked GRUs (return_sequences), Dense(1)."""
    inputs = keras.layers.Input(shape=(24, 7))
    x = keras.layers.Conv1D(12, 3, padding="causal", activation="relu")(inputs)
    x = keras.layers.GRU(8, return_sequences=True)(x)
    x = keras.layers.GRU(8)(x)
    outputs = keras.layers.Dense(1)(x)
    return keras.Model(inputs, outputs, name="gru_forecaster")


def _transformer_encoder(inputs, head_size, num_heads, ff_dim, dropout=0):
    x = layers.MultiHeadAttention(key_dim=head_size, num_heads=num_heads, dropout=dropout)(inputs, inputs)
    x = layers.Dropout(dropout)(x)
    x = layers.LayerNormalization(epsilon=1e-6)(x)
    res = x + inputs
    x = layers.Conv1D(filters=ff_dim, kernel_size=1, activation="relu")(res)
    x = layers.Dropout(dropout)(x)
    x = layers.Conv1D(filters=inputs.shape[-1], kernel_size=1)(x)
    x = layers.LayerNormalization(epsilon=1e-6)(x)
    return x + res


@example(
    "time series",
    "Timeseries classification with a Transformer model",
    KERAS_IO + "timeseries/timeseries_classification_transformer/",
    notes="a Dense(8) input projection (the example runs on 1 feature); head_size 256 -> 8, 2 blocks",
)
def transformer_classifier():
    """MHA + post-norm residual blocks with a Conv1D feed-forward, GlobalAveragePooling1D(channels_first), MLP."""
    inputs = keras.Input(shape=(32, 1))
    x = layers.Dense(8)(inputs)
    for _ in range(2):
        x = _transformer_encoder(x, head_size=8, num_heads=2, ff_dim=4, dropout=0.25)
    x = layers.GlobalAveragePooling1D(data_format="channels_first")(x)
    for dim in [16]:
        x = layers.Dense(dim, activation="relu")(x)
        x = layers.Dropout(0.4)(x)
    outputs = layers.Dense(2, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="transformer_classifier")


@example(
    "time series",
    "Timeseries anomaly detection using an Autoencoder",
    KERAS_IO + "timeseries/timeseries_anomaly_detection/",
    notes="filters 32/16 -> 8/4, 64 steps",
)
def conv_autoencoder():
    """Strided Conv1D encoder, Conv1DTranspose decoder, Dropout (a Sequential)."""
    return keras.Sequential(
        [
            layers.Input(shape=(64, 1)),
            layers.Conv1D(filters=8, kernel_size=7, padding="same", strides=2, activation="relu"),
            layers.Dropout(rate=0.2),
            layers.Conv1D(filters=4, kernel_size=7, padding="same", strides=2, activation="relu"),
            layers.Conv1DTranspose(filters=4, kernel_size=7, padding="same", strides=2, activation="relu"),
            layers.Dropout(rate=0.2),
            layers.Conv1DTranspose(filters=8, kernel_size=7, padding="same", strides=2, activation="relu"),
            layers.Conv1DTranspose(filters=1, kernel_size=7, padding="same"),
        ],
        name="conv_autoencoder",
    )
