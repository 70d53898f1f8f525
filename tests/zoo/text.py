"""Text: small versions of keras.io NLP examples."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from zoo.registry import KERAS_IO, example

serializable = keras.saving.register_keras_serializable(package="zoo")


def _tokens(length):
    def sample(model, batch, seed):
        return np.random.default_rng(seed).integers(0, 50, size=(batch, length)).astype("int64")

    return sample


@example(
    "text",
    "Text classification from scratch (Embedding + Conv1D)",
    KERAS_IO + "nlp/text_classification_from_scratch/",
    sample=_tokens(48),
    notes="vocabulary 20000 -> 64, widths 128 -> 8/12; sequence length None as in the example",
)
def text_cnn():
    """Embedding, Dropout, strided Conv1Ds, GlobalMaxPooling1D, Dense, sigmoid Dense."""
    inputs = keras.Input(shape=(None,), dtype="int64")
    x = layers.Embedding(64, 8)(inputs)
    x = layers.Dropout(0.5)(x)
    x = layers.Conv1D(12, 7, padding="valid", activation="relu", strides=3)(x)
    x = layers.Conv1D(12, 7, padding="valid", activation="relu", strides=3)(x)
    x = layers.GlobalMaxPooling1D()(x)
    x = layers.Dense(16, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    predictions = layers.Dense(1, activation="sigmoid", name="predictions")(x)
    return keras.Model(inputs, predictions, name="text_cnn")


@example(
    "text",
    "Bidirectional LSTM on IMDB",
    KERAS_IO + "nlp/bidirectional_lstm_imdb/",
    sample=_tokens(16),
    notes="vocabulary 20000 -> 64, 128 -> 8 dims, 64 -> 6 units",
)
def bidirectional_lstm():
    """Embedding, two Bidirectional(LSTM) (sequences, then last state), sigmoid Dense."""
    inputs = keras.Input(shape=(None,), dtype="int32")
    x = layers.Embedding(64, 8)(inputs)
    x = layers.Bidirectional(layers.LSTM(6, return_sequences=True))(x)
    x = layers.Bidirectional(layers.LSTM(6))(x)
    outputs = layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs, name="bidirectional_lstm")


@serializable
class TransformerBlock(layers.Layer):
    def __init__(self, embed_dim, num_heads, ff_dim, rate=0.1, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim, self.num_heads, self.ff_dim, self.rate = embed_dim, num_heads, ff_dim, rate
        self.att = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
        self.ffn = keras.Sequential([layers.Dense(ff_dim, activation="relu"), layers.Dense(embed_dim)])
        self.layernorm1 = layers.LayerNormalization(epsilon=1e-6)
        self.layernorm2 = layers.LayerNormalization(epsilon=1e-6)
        self.dropout1 = layers.Dropout(rate)
        self.dropout2 = layers.Dropout(rate)

    def call(self, inputs):
        attn_output = self.att(inputs, inputs)
        attn_output = self.dropout1(attn_output)
        out1 = self.layernorm1(inputs + attn_output)
        ffn_output = self.ffn(out1)
        ffn_output = self.dropout2(ffn_output)
        return self.layernorm2(out1 + ffn_output)

    def get_config(self):
        return {**super().get_config(), "embed_dim": self.embed_dim, "num_heads": self.num_heads,
                "ff_dim": self.ff_dim, "rate": self.rate}  # fmt: skip


@serializable
class TokenAndPositionEmbedding(layers.Layer):
    def __init__(self, maxlen, vocab_size, embed_dim, **kwargs):
        super().__init__(**kwargs)
        self.maxlen, self.vocab_size, self.embed_dim = maxlen, vocab_size, embed_dim
        self.token_emb = layers.Embedding(input_dim=vocab_size, output_dim=embed_dim)
        self.pos_emb = layers.Embedding(input_dim=maxlen, output_dim=embed_dim)

    def call(self, x):
        maxlen = ops.shape(x)[-1]
        positions = ops.arange(0, maxlen, 1)
        positions = self.pos_emb(positions)
        x = self.token_emb(x)
        return x + positions

    def get_config(self):
        return {**super().get_config(), "maxlen": self.maxlen, "vocab_size": self.vocab_size,
                "embed_dim": self.embed_dim}  # fmt: skip


@example(
    "text",
    "Text classification with Transformer",
    KERAS_IO + "nlp/text_classification_with_transformer/",
    sample=_tokens(20),
    notes="vocabulary 20000 -> 64, embed_dim 32 -> 8, ff_dim 32 -> 12",
)
def text_transformer():
    """TokenAndPositionEmbedding and TransformerBlock custom layers, GlobalAveragePooling1D, Dense head."""
    maxlen = 20
    inputs = layers.Input(shape=(maxlen,))
    x = TokenAndPositionEmbedding(maxlen, 64, 8)(inputs)
    x = TransformerBlock(8, 2, 12)(x)
    x = layers.GlobalAveragePooling1D()(x)
    x = layers.Dropout(0.1)(x)
    x = layers.Dense(20, activation="relu")(x)
    x = layers.Dropout(0.1)(x)
    outputs = layers.Dense(2, activation="softmax")(x)
    return keras.Model(inputs=inputs, outputs=outputs, name="text_transformer")


@example(
    "text",
    "Using pre-trained word embeddings (Embedding + Conv1D/MaxPooling1D, frozen embedding)",
    KERAS_IO + "nlp/pretrained_word_embeddings/",
    sample=_tokens(64),
    notes="the embedding matrix random instead of GloVe; widths 128 -> 8",
)
def word_embeddings_cnn():
    """Frozen Embedding, Conv1D/MaxPooling1D stack, GlobalMaxPooling1D, Dense, softmax Dense."""
    int_sequences_input = keras.Input(shape=(None,), dtype="int32")
    embedded_sequences = layers.Embedding(64, 10, trainable=False)(int_sequences_input)
    x = layers.Conv1D(8, 5, activation="relu")(embedded_sequences)
    x = layers.MaxPooling1D(5)(x)
    x = layers.Conv1D(8, 3, activation="relu")(x)
    x = layers.MaxPooling1D(2)(x)
    x = layers.Conv1D(8, 3, activation="relu")(x)
    x = layers.GlobalMaxPooling1D()(x)
    x = layers.Dense(8, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    preds = layers.Dense(4, activation="softmax")(x)
    return keras.Model(int_sequences_input, preds, name="word_embeddings_cnn")
