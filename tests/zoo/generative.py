"""Generation: small versions of keras.io generative examples."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

from zoo.registry import KERAS_IO, example

serializable = keras.saving.register_keras_serializable(package="zoo")


@example("generation", "DCGAN to generate face images (generator)", KERAS_IO + "generative/dcgan_overriding_train_step/")
def dcgan_generator():
    """Dense -> Reshape -> Conv2DTranspose/LeakyReLU stack -> sigmoid Conv2D."""
    latent_dim = 16
    return keras.Sequential(
        [
            keras.Input(shape=(latent_dim,)),
            layers.Dense(4 * 4 * 16),
            layers.Reshape((4, 4, 16)),
            layers.Conv2DTranspose(16, kernel_size=4, strides=2, padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.Conv2DTranspose(24, kernel_size=4, strides=2, padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.Conv2DTranspose(32, kernel_size=4, strides=2, padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.Conv2D(3, kernel_size=5, padding="same", activation="sigmoid"),
        ],
        name="generator",
    )


@example(
    "generation", "DCGAN to generate face images (discriminator)", KERAS_IO + "generative/dcgan_overriding_train_step/"
)
def dcgan_discriminator():
    """Strided Conv2D/LeakyReLU stack, Flatten, Dropout, sigmoid Dense."""
    return keras.Sequential(
        [
            keras.Input(shape=(32, 32, 3)),
            layers.Conv2D(8, kernel_size=4, strides=2, padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.Conv2D(16, kernel_size=4, strides=2, padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.Conv2D(16, kernel_size=4, strides=2, padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.Flatten(),
            layers.Dropout(0.2),
            layers.Dense(1, activation="sigmoid"),
        ],
        name="discriminator",
    )


@serializable
class Sampling(layers.Layer):
    """Uses (z_mean, z_log_var) to sample z, the vector encoding a digit."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        batch = ops.shape(z_mean)[0]
        dim = ops.shape(z_mean)[1]
        epsilon = keras.random.normal(shape=(batch, dim), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * epsilon


@example("generation", "Variational AutoEncoder (encoder)", KERAS_IO + "generative/vae/")
def vae_encoder():
    """Strided Conv2Ds, Flatten, Dense, z_mean/z_log_var Dense heads and the custom Sampling layer (3 outputs)."""
    latent_dim = 2
    encoder_inputs = keras.Input(shape=(28, 28, 1))
    x = layers.Conv2D(8, 3, activation="relu", strides=2, padding="same")(encoder_inputs)
    x = layers.Conv2D(16, 3, activation="relu", strides=2, padding="same")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(16, activation="relu")(x)
    z_mean = layers.Dense(latent_dim, name="z_mean")(x)
    z_log_var = layers.Dense(latent_dim, name="z_log_var")(x)
    z = Sampling()([z_mean, z_log_var])
    return keras.Model(encoder_inputs, [z_mean, z_log_var, z], name="encoder")


@example("generation", "Variational AutoEncoder (decoder)", KERAS_IO + "generative/vae/")
def vae_decoder():
    """Dense -> Reshape -> Conv2DTranspose stack -> sigmoid Conv2DTranspose."""
    latent_inputs = keras.Input(shape=(2,))
    x = layers.Dense(7 * 7 * 16, activation="relu")(latent_inputs)
    x = layers.Reshape((7, 7, 16))(x)
    x = layers.Conv2DTranspose(16, 3, activation="relu", strides=2, padding="same")(x)
    x = layers.Conv2DTranspose(8, 3, activation="relu", strides=2, padding="same")(x)
    decoder_outputs = layers.Conv2DTranspose(1, 3, activation="sigmoid", padding="same")(x)
    return keras.Model(latent_inputs, decoder_outputs, name="decoder")


embedding_dims = 8
embedding_max_frequency = 1000.0


@keras.saving.register_keras_serializable(package="zoo")
def sinusoidal_embedding(x):
    embedding_min_frequency = 1.0
    frequencies = ops.exp(
        ops.linspace(ops.log(embedding_min_frequency), ops.log(embedding_max_frequency), embedding_dims // 2)
    )
    angular_speeds = ops.cast(2.0 * math.pi * frequencies, "float32")
    return ops.concatenate([ops.sin(angular_speeds * x), ops.cos(angular_speeds * x)], axis=3)


def _residual_block(width):
    def apply(x):
        input_width = x.shape[3]
        if input_width == width:
            residual = x
        else:
            residual = layers.Conv2D(width, kernel_size=1)(x)
        x = layers.BatchNormalization(center=False, scale=False)(x)
        x = layers.Conv2D(width, kernel_size=3, padding="same", activation="swish")(x)
        x = layers.Conv2D(width, kernel_size=3, padding="same")(x)
        return layers.Add()([x, residual])

    return apply


def _down_block(width, block_depth):
    def apply(x):
        x, skips = x
        for _ in range(block_depth):
            x = _residual_block(width)(x)
            skips.append(x)
        return layers.AveragePooling2D(pool_size=2)(x)

    return apply


def _up_block(width, block_depth):
    def apply(x):
        x, skips = x
        x = layers.UpSampling2D(size=2, interpolation="bilinear")(x)
        for _ in range(block_depth):
            x = layers.Concatenate()([x, skips.pop()])
            x = _residual_block(width)(x)
        return x

    return apply


def _ddim_sample(model, batch, seed):
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=(batch, 16, 16, 3)).astype("float32"),
        rng.uniform(0.01, 1.0, size=(batch, 1, 1, 1)).astype("float32"),
    ]


@example(
    "generation",
    "Denoising Diffusion Implicit Models (the U-Net)",
    KERAS_IO + "generative/ddim/",
    sample=_ddim_sample,
    notes="widths [32, 64, 96, 128] -> [4, 8, 12], block depth 1, 16x16 images",
)
def ddim_unet():
    """Noise-variance input through a sinusoidal Lambda and UpSampling2D, concatenated; residual U-Net with skips."""
    image_size, widths, block_depth = 16, [4, 8, 12], 1
    noisy_images = keras.Input(shape=(image_size, image_size, 3))
    noise_variances = keras.Input(shape=(1, 1, 1))
    e = layers.Lambda(sinusoidal_embedding, output_shape=(1, 1, embedding_dims))(noise_variances)
    e = layers.UpSampling2D(size=image_size, interpolation="nearest")(e)
    x = layers.Conv2D(widths[0], kernel_size=1)(noisy_images)
    x = layers.Concatenate()([x, e])
    skips = []
    for width in widths[:-1]:
        x = _down_block(width, block_depth)([x, skips])
    for _ in range(block_depth):
        x = _residual_block(widths[-1])(x)
    for width in reversed(widths[:-1]):
        x = _up_block(width, block_depth)([x, skips])
    x = layers.Conv2D(3, kernel_size=1, kernel_initializer="zeros")(x)
    return keras.Model([noisy_images, noise_variances], x, name="residual_unet")


@example(
    "generation",
    "WGAN-GP overriding Model.train_step (generator)",
    KERAS_IO + "generative/wgan_gp/",
    notes="widths 256/128/64 -> 16/12/8",
)
def wgan_gp_generator():
    """Dense/BN/LeakyReLU, Reshape, UpSampling2D+Conv2D+BN+LeakyReLU blocks, Cropping2D to 28x28, tanh."""

    def upsample_block(x, filters, activation, kernel_size=(3, 3), strides=(1, 1), up_size=(2, 2), padding="same",
                       use_bn=False, use_bias=True, use_dropout=False, drop_value=0.3):  # fmt: skip
        x = layers.UpSampling2D(up_size)(x)
        x = layers.Conv2D(filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias)(x)
        if use_bn:
            x = layers.BatchNormalization()(x)
        if activation:
            x = activation(x)
        if use_dropout:
            x = layers.Dropout(drop_value)(x)
        return x

    noise = layers.Input(shape=(16,))
    x = layers.Dense(4 * 4 * 16, use_bias=False)(noise)
    x = layers.BatchNormalization()(x)
    x = layers.LeakyReLU(0.2)(x)
    x = layers.Reshape((4, 4, 16))(x)
    x = upsample_block(x, 12, layers.LeakyReLU(0.2), use_bias=False, use_bn=True)
    x = upsample_block(x, 8, layers.LeakyReLU(0.2), use_bias=False, use_bn=True)
    x = upsample_block(x, 1, layers.Activation("tanh"), use_bias=False, use_bn=True)
    x = layers.Cropping2D((2, 2))(x)
    return keras.Model(noise, x, name="generator")


@example(
    "generation",
    "WGAN-GP overriding Model.train_step (critic)",
    KERAS_IO + "generative/wgan_gp/",
    notes="widths 64..512 -> 4..16",
)
def wgan_gp_critic():
    """ZeroPadding2D to 32x32, Conv2D/LeakyReLU/Dropout blocks, Flatten, Dropout, Dense(1)."""

    def conv_block(x, filters, activation, kernel_size=(5, 5), strides=(2, 2), padding="same", use_bias=True,
                   use_bn=False, use_dropout=False, drop_value=0.5):  # fmt: skip
        x = layers.Conv2D(filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias)(x)
        if use_bn:
            x = layers.BatchNormalization()(x)
        x = activation(x)
        if use_dropout:
            x = layers.Dropout(drop_value)(x)
        return x

    img_input = layers.Input(shape=(28, 28, 1))
    x = layers.ZeroPadding2D((2, 2))(img_input)
    x = conv_block(x, 4, activation=layers.LeakyReLU(0.2), use_bias=True)
    x = conv_block(x, 8, activation=layers.LeakyReLU(0.2), use_bias=True, use_dropout=True, drop_value=0.3)
    x = conv_block(x, 12, activation=layers.LeakyReLU(0.2), use_bias=True, use_dropout=True, drop_value=0.3)
    x = conv_block(x, 16, activation=layers.LeakyReLU(0.2), use_bias=True)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.2)(x)
    x = layers.Dense(1)(x)
    return keras.Model(img_input, x, name="discriminator")


@serializable
class PixelConvLayer(layers.Layer):
    """The PixelCNN example's masked convolution: assigns `kernel * mask` to its inner Conv2D in `call`."""

    def __init__(self, mask_type, **kwargs):
        conv_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k not in ("name", "dtype", "trainable")}
        super().__init__(**kwargs)
        self.mask_type = mask_type
        self.conv_kwargs = conv_kwargs
        self.conv = layers.Conv2D(**conv_kwargs)

    def build(self, input_shape):
        self.conv.build(input_shape)
        kernel_shape = ops.shape(self.conv.kernel)
        self.mask = np.zeros(shape=kernel_shape)
        self.mask[: kernel_shape[0] // 2, ...] = 1.0
        self.mask[kernel_shape[0] // 2, : kernel_shape[1] // 2, ...] = 1.0
        if self.mask_type == "B":
            self.mask[kernel_shape[0] // 2, kernel_shape[1] // 2, ...] = 1.0

    def call(self, inputs):
        self.conv.kernel.assign(self.conv.kernel * self.mask)
        return self.conv(inputs)

    def get_config(self):
        return {**super().get_config(), "mask_type": self.mask_type, **self.conv_kwargs}


@serializable
class PixelResidualBlock(keras.layers.Layer):
    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv1 = keras.layers.Conv2D(filters=filters, kernel_size=1, activation="relu")
        self.pixel_conv = PixelConvLayer(mask_type="B", filters=filters // 2, kernel_size=3, activation="relu",
                                         padding="same")  # fmt: skip
        self.conv2 = keras.layers.Conv2D(filters=filters, kernel_size=1, activation="relu")

    def call(self, inputs):
        x = self.conv1(inputs)
        x = self.pixel_conv(x)
        x = self.conv2(x)
        return keras.layers.add([inputs, x])

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@example(
    "generation",
    "PixelCNN",
    KERAS_IO + "generative/pixelcnn/",
    notes="128 filters -> 8, 2 residual blocks, 16x16 input",
)
def pixelcnn():
    """Masked-convolution custom layers (kernel assigned in call) and composite residual blocks."""
    inputs = keras.Input(shape=(16, 16, 1))
    x = PixelConvLayer(mask_type="A", filters=8, kernel_size=7, activation="relu", padding="same")(inputs)
    for _ in range(2):
        x = PixelResidualBlock(filters=8)(x)
    for _ in range(2):
        x = PixelConvLayer(mask_type="B", filters=8, kernel_size=1, strides=1, activation="relu", padding="valid")(x)
    out = keras.layers.Conv2D(filters=1, kernel_size=1, strides=1, activation="sigmoid", padding="valid")(x)
    return keras.Model(inputs, out, name="pixel_cnn")
