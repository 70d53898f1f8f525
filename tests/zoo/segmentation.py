"""Segmentation: small versions of keras.io segmentation examples."""

from __future__ import annotations

import keras
from keras import layers, ops

from zoo.registry import KERAS_IO, example


@example(
    "segmentation",
    "Image segmentation with a U-Net-like architecture",
    KERAS_IO + "vision/oxford_pets_image_segmentation/",
    notes="widths 32..256 -> 4..16, 32x32 input, 3 classes",
)
def unet_xception():
    """Xception-style encoder (SeparableConv2D, strided 1x1 residuals) and a Conv2DTranspose/UpSampling2D decoder."""
    inputs = keras.Input(shape=(32, 32, 3))
    x = layers.Conv2D(4, 3, strides=2, padding="same")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    previous_block_activation = x
    for filters in [8, 12, 16]:
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = layers.Conv2D(filters, 1, strides=2, padding="same")(previous_block_activation)
        x = layers.add([x, residual])
        previous_block_activation = x
    for filters in [16, 12, 8, 4]:
        x = layers.Activation("relu")(x)
        x = layers.Conv2DTranspose(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.Conv2DTranspose(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.UpSampling2D(2)(x)
        residual = layers.UpSampling2D(2)(previous_block_activation)
        residual = layers.Conv2D(filters, 1, padding="same")(residual)
        x = layers.add([x, residual])
        previous_block_activation = x
    outputs = layers.Conv2D(3, 3, activation="softmax", padding="same")(x)
    return keras.Model(inputs, outputs, name="unet_xception")


def _convolution_block(block_input, num_filters=16, kernel_size=3, dilation_rate=1, use_bias=False):
    x = layers.Conv2D(
        num_filters,
        kernel_size=kernel_size,
        dilation_rate=dilation_rate,
        padding="same",
        use_bias=use_bias,
        kernel_initializer=keras.initializers.HeNormal(),
    )(block_input)
    x = layers.BatchNormalization()(x)
    return ops.nn.relu(x)


def _dilated_spatial_pyramid_pooling(dspp_input):
    dims = dspp_input.shape
    x = layers.AveragePooling2D(pool_size=(dims[-3], dims[-2]))(dspp_input)
    x = _convolution_block(x, kernel_size=1, use_bias=True)
    out_pool = layers.UpSampling2D(
        size=(dims[-3] // x.shape[1], dims[-2] // x.shape[2]), interpolation="bilinear"
    )(x)
    out_1 = _convolution_block(dspp_input, kernel_size=1, dilation_rate=1)
    out_6 = _convolution_block(dspp_input, kernel_size=3, dilation_rate=6)
    out_12 = _convolution_block(dspp_input, kernel_size=3, dilation_rate=12)
    out_18 = _convolution_block(dspp_input, kernel_size=3, dilation_rate=18)
    x = layers.Concatenate(axis=-1)([out_pool, out_1, out_6, out_12, out_18])
    return _convolution_block(x, kernel_size=1)


@example(
    "segmentation",
    "Multiclass semantic segmentation using DeepLabV3+",
    KERAS_IO + "vision/deeplabv3_plus/",
    notes="the ResNet50 backbone replaced by a small ResNet-style one with the same two taps (/4 and /16); "
    "the example's caffe preprocess_input kept",
)
def deeplabv3_plus():
    """DSPP (image pooling + dilated convs + Concatenate) with ops.nn.relu, bilinear UpSampling2D, skip Concatenate."""
    image_size, num_classes = 32, 4
    model_input = keras.Input(shape=(image_size, image_size, 3))
    x = keras.applications.resnet50.preprocess_input(model_input)
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="conv1_conv")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1_pool")(x)

    def block(x, filters, stride, name):
        shortcut = layers.Conv2D(filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        y = layers.Conv2D(filters, 3, strides=stride, padding="same", name=f"{name}_1_conv")(x)
        y = layers.BatchNormalization(name=f"{name}_1_bn")(y)
        y = layers.Activation("relu", name=f"{name}_1_relu")(y)
        y = layers.Conv2D(filters, 3, padding="same", name=f"{name}_2_conv")(y)
        y = layers.BatchNormalization(name=f"{name}_2_bn")(y)
        y = layers.Activation("relu", name=f"{name}_2_relu")(y)
        return layers.Add(name=f"{name}_add")([shortcut, y])

    low = block(x, 8, 1, "conv2_block3")
    y = block(low, 12, 2, "conv3_block4")
    y = block(y, 16, 2, "conv4_block6")
    x = _dilated_spatial_pyramid_pooling(y)
    input_a = layers.UpSampling2D(
        size=(image_size // 4 // x.shape[1], image_size // 4 // x.shape[2]), interpolation="bilinear"
    )(x)
    input_b = _convolution_block(low, num_filters=6, kernel_size=1)
    x = layers.Concatenate(axis=-1)([input_a, input_b])
    x = _convolution_block(x)
    x = _convolution_block(x)
    x = layers.UpSampling2D(size=(image_size // x.shape[1], image_size // x.shape[2]), interpolation="bilinear")(x)
    model_output = layers.Conv2D(num_classes, kernel_size=(1, 1), padding="same")(x)
    return keras.Model(inputs=model_input, outputs=model_output, name="deeplabv3_plus")


@example(
    "segmentation",
    "3D/2D U-Net with Conv2DTranspose skips (the classic Ronneberger U-Net as in the brain-tumour example)",
    KERAS_IO + "vision/brain_tumor_segmentation/",
    notes="2-D, depth 3, widths 4..16",
)
def unet_classic():
    """Double Conv2D blocks, MaxPooling2D, Conv2DTranspose up-sampling and Concatenate skips, sigmoid mask."""
    inputs = keras.Input((32, 32, 1))

    def double_conv(x, f):
        x = layers.Conv2D(f, 3, padding="same", activation="relu", kernel_initializer="he_normal")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Conv2D(f, 3, padding="same", activation="relu", kernel_initializer="he_normal")(x)
        return layers.BatchNormalization()(x)

    skips = []
    x = inputs
    for f in (4, 8, 12):
        x = double_conv(x, f)
        skips.append(x)
        x = layers.MaxPooling2D((2, 2))(x)
        x = layers.Dropout(0.1)(x)
    x = double_conv(x, 16)
    for f in (12, 8, 4):
        x = layers.Conv2DTranspose(f, (3, 3), strides=(2, 2), padding="same")(x)
        x = layers.concatenate([x, skips.pop()])
        x = layers.Dropout(0.1)(x)
        x = double_conv(x, f)
    outputs = layers.Conv2D(1, (1, 1), activation="sigmoid")(x)
    return keras.Model(inputs=[inputs], outputs=[outputs], name="unet_classic")
