"""OCR: small versions of keras.io text-recognition examples."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from zoo.registry import KERAS_IO, example

serializable = keras.saving.register_keras_serializable(package="zoo")


def ctc_batch_cost(y_true, y_pred, input_length, label_length):
    label_length = ops.cast(ops.squeeze(label_length, axis=-1), dtype="int32")
    input_length = ops.cast(ops.squeeze(input_length, axis=-1), dtype="int32")
    sparse_labels = ops.cast(y_true, dtype="int32")
    return ops.expand_dims(
        ops.nn.ctc_loss(sparse_labels, y_pred, label_length, input_length, mask_index=y_pred.shape[-1] - 1), 1
    )


@serializable
class CTCLayer(layers.Layer):
    def __init__(self, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.loss_fn = ctc_batch_cost

    def call(self, y_true, y_pred):
        batch_len = ops.cast(ops.shape(y_true)[0], dtype="int64")
        input_length = ops.cast(ops.shape(y_pred)[1], dtype="int64")
        label_length = ops.cast(ops.shape(y_true)[1], dtype="int64")
        input_length = input_length * ops.ones(shape=(batch_len, 1), dtype="int64")
        label_length = label_length * ops.ones(shape=(batch_len, 1), dtype="int64")
        loss = self.loss_fn(y_true, y_pred, input_length, label_length)
        self.add_loss(ops.mean(loss))
        return y_pred


def _captcha_sample(model, batch, seed):
    rng = np.random.default_rng(seed)
    return [
        rng.uniform(0, 1, size=(batch, 64, 16, 1)).astype("float32"),
        rng.integers(0, 10, size=(batch, 5)).astype("float32"),
    ]


@example(
    "OCR",
    "OCR model for reading Captchas",
    KERAS_IO + "vision/captcha_ocr/",
    sample=_captcha_sample,
    notes="200x50 -> 64x16 images, widths 32/64 -> 4/8, LSTM 128/64 -> 8/6, 10 characters",
)
def captcha_ocr():
    """Conv2D/MaxPooling2D, Reshape to a sequence, Dense, two Bidirectional LSTMs, softmax Dense, CTCLayer (add_loss)."""
    img_width, img_height, vocabulary = 64, 16, 10
    input_img = layers.Input(shape=(img_width, img_height, 1), name="image", dtype="float32")
    labels = layers.Input(name="label", shape=(None,), dtype="float32")
    x = layers.Conv2D(4, (3, 3), activation="relu", kernel_initializer="he_normal", padding="same", name="Conv1")(
        input_img
    )
    x = layers.MaxPooling2D((2, 2), name="pool1")(x)
    x = layers.Conv2D(8, (3, 3), activation="relu", kernel_initializer="he_normal", padding="same", name="Conv2")(x)
    x = layers.MaxPooling2D((2, 2), name="pool2")(x)
    new_shape = ((img_width // 4), (img_height // 4) * 8)
    x = layers.Reshape(target_shape=new_shape, name="reshape")(x)
    x = layers.Dense(16, activation="relu", name="dense1")(x)
    x = layers.Dropout(0.2)(x)
    x = layers.Bidirectional(layers.LSTM(8, return_sequences=True, dropout=0.25))(x)
    x = layers.Bidirectional(layers.LSTM(6, return_sequences=True, dropout=0.25))(x)
    x = layers.Dense(vocabulary + 1, activation="softmax", name="dense2")(x)
    output = CTCLayer(name="ctc_loss")(labels, x)
    return keras.models.Model(inputs=[input_img, labels], outputs=output, name="ocr_model_v1")
