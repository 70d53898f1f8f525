"""Detection and keypoints: small versions of keras.io detection examples."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from zoo.registry import KERAS_IO, example

serializable = keras.saving.register_keras_serializable(package="zoo")


def _tiny_backbone(name="backbone"):
    """A ResNet-like stand-in for the example's ResNet50 with outputs c3, c4, c5 (strides 8, 16, 32)."""
    inputs = keras.Input(shape=[None, None, 3])
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    outs = []
    for f in (8, 12, 16):
        s = layers.Conv2D(f, 1, strides=2)(x)
        y = layers.Conv2D(f, 3, strides=2, padding="same")(x)
        y = layers.BatchNormalization()(y)
        y = layers.ReLU()(y)
        y = layers.Conv2D(f, 3, padding="same")(y)
        x = layers.ReLU()(layers.Add()([s, y]))
        outs.append(x)
    return keras.Model(inputs=inputs, outputs=outs, name=name)


def _build_head(output_filters, bias_init, width=8):
    head = keras.Sequential([keras.Input(shape=[None, None, width])])
    kernel_init = keras.initializers.RandomNormal(0.0, 0.01)
    for _ in range(2):
        head.add(layers.Conv2D(width, 3, padding="same", kernel_initializer=kernel_init))
        head.add(layers.ReLU())
    head.add(layers.Conv2D(output_filters, 3, 1, padding="same", kernel_initializer=kernel_init, bias_initializer=bias_init))
    return head


@example(
    "detection",
    "Object detection with RetinaNet (written with the Functional API)",
    KERAS_IO + "vision/retinanet/",
    notes="the example's FeaturePyramid and heads written functionally; tiny backbone; 3 levels; "
    "heads shared across levels as in the example",
)
def retinanet_functional():
    """Backbone model with 3 outputs, FPN (1x1 laterals, UpSampling2D adds, 3x3 outputs), shared head Sequentials."""
    num_classes, width, anchors = 3, 8, 9
    image = keras.Input(shape=(64, 64, 3))
    c3, c4, c5 = _tiny_backbone()(image)
    p3 = layers.Conv2D(width, 1, 1, "same")(c3)
    p4 = layers.Conv2D(width, 1, 1, "same")(c4)
    p5 = layers.Conv2D(width, 1, 1, "same")(c5)
    p4 = p4 + layers.UpSampling2D(2)(p5)
    p3 = p3 + layers.UpSampling2D(2)(p4)
    p3 = layers.Conv2D(width, 3, 1, "same")(p3)
    p4 = layers.Conv2D(width, 3, 1, "same")(p4)
    p5 = layers.Conv2D(width, 3, 1, "same")(p5)
    prior_probability = keras.initializers.Constant(-np.log((1 - 0.01) / 0.01))
    cls_head = _build_head(anchors * num_classes, prior_probability, width)
    box_head = _build_head(anchors * 4, "zeros", width)
    cls_outputs, box_outputs = [], []
    for feature in (p3, p4, p5):
        box_outputs.append(layers.Reshape((-1, 4))(box_head(feature)))
        cls_outputs.append(layers.Reshape((-1, num_classes))(cls_head(feature)))
    cls_outputs = layers.Concatenate(axis=1)(cls_outputs)
    box_outputs = layers.Concatenate(axis=1)(box_outputs)
    outputs = layers.Concatenate(axis=-1)([box_outputs, cls_outputs])
    return keras.Model(image, outputs, name="retinanet_functional")


@serializable
class FeaturePyramid(keras.layers.Layer):
    """The RetinaNet example's FPN layer: laterals, top-down adds, output convs, P6/P7."""

    def __init__(self, backbone=None, width=8, **kwargs):
        super().__init__(name="FeaturePyramid", **kwargs)
        self.backbone = backbone if backbone is not None else _tiny_backbone()
        self.conv_c3_1x1 = keras.layers.Conv2D(width, 1, 1, "same")
        self.conv_c4_1x1 = keras.layers.Conv2D(width, 1, 1, "same")
        self.conv_c5_1x1 = keras.layers.Conv2D(width, 1, 1, "same")
        self.conv_c3_3x3 = keras.layers.Conv2D(width, 3, 1, "same")
        self.conv_c4_3x3 = keras.layers.Conv2D(width, 3, 1, "same")
        self.conv_c5_3x3 = keras.layers.Conv2D(width, 3, 1, "same")
        self.conv_c6_3x3 = keras.layers.Conv2D(width, 3, 2, "same")
        self.conv_c7_3x3 = keras.layers.Conv2D(width, 3, 2, "same")
        self.upsample_2x = keras.layers.UpSampling2D(2)

    def call(self, images, training=False):
        c3_output, c4_output, c5_output = self.backbone(images, training=training)
        p3_output = self.conv_c3_1x1(c3_output)
        p4_output = self.conv_c4_1x1(c4_output)
        p5_output = self.conv_c5_1x1(c5_output)
        p4_output = p4_output + self.upsample_2x(p5_output)
        p3_output = p3_output + self.upsample_2x(p4_output)
        p3_output = self.conv_c3_3x3(p3_output)
        p4_output = self.conv_c4_3x3(p4_output)
        p5_output = self.conv_c5_3x3(p5_output)
        p6_output = self.conv_c6_3x3(c5_output)
        p7_output = self.conv_c7_3x3(ops.nn.relu(p6_output))
        return p3_output, p4_output, p5_output, p6_output, p7_output


@serializable
class RetinaNet(keras.Model):
    """The RetinaNet example's subclassed model: FPN layer, shared class/box heads, ops reshapes and concat."""

    def __init__(self, num_classes=3, backbone=None, **kwargs):
        super().__init__(name="RetinaNet", **kwargs)
        self.fpn = FeaturePyramid(backbone)
        self.num_classes = num_classes
        prior_probability = keras.initializers.Constant(-np.log((1 - 0.01) / 0.01))
        self.cls_head = _build_head(9 * num_classes, prior_probability)
        self.box_head = _build_head(9 * 4, "zeros")

    def call(self, image, training=False):
        features = self.fpn(image, training=training)
        N = ops.shape(image)[0]
        cls_outputs, box_outputs = [], []
        for feature in features:
            box_outputs.append(ops.reshape(self.box_head(feature), [N, -1, 4]))
            cls_outputs.append(ops.reshape(self.cls_head(feature), [N, -1, self.num_classes]))
        cls_outputs = ops.concatenate(cls_outputs, axis=1)
        box_outputs = ops.concatenate(box_outputs, axis=1)
        return ops.concatenate([box_outputs, cls_outputs], axis=-1)

    def get_config(self):
        return {"num_classes": self.num_classes}


def _sample_64(model, batch, seed):
    return np.random.default_rng(seed).normal(size=(batch, 64, 64, 3)).astype("float32")


@example(
    "detection",
    "Object detection with RetinaNet (the example's subclassed RetinaNet model)",
    KERAS_IO + "vision/retinanet/",
    sample=_sample_64,
    notes="tiny backbone; otherwise the example's FeaturePyramid layer and RetinaNet(keras.Model)",
)
def retinanet_subclassed():
    """A subclassed keras.Model whose call runs a composite FPN layer and shared heads on 5 levels."""
    model = RetinaNet(3)
    model(np.zeros((1, 64, 64, 3), "float32"))
    return model


@example(
    "detection",
    "Keypoint detection with transfer learning",
    KERAS_IO + "vision/keypoint_detection/",
    notes="MobileNetV2(alpha=0.35, weights=None) at 96x96 instead of the ImageNet one at 224; 8 keypoints",
)
def keypoint_detection():
    """Nested keras.applications MobileNetV2 after its preprocess_input, Dropout, two SeparableConv2D heads."""
    backbone = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(96, 96, 3), alpha=0.35)
    backbone.trainable = False
    inputs = layers.Input((96, 96, 3))
    x = keras.applications.mobilenet_v2.preprocess_input(inputs)
    x = backbone(x)
    x = layers.Dropout(0.3)(x)
    x = layers.SeparableConv2D(8 * 2, kernel_size=3, strides=1, activation="relu")(x)
    outputs = layers.SeparableConv2D(8 * 2, kernel_size=1, strides=1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs, name="keypoint_detector")
