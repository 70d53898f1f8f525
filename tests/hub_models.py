"""Small keras_hub models built from constructor arguments (never presets, never downloads).

Shared by tests/test_keras_hub.py and benchmarks/coverage_hub.py. Widths and depths
are tiny; where keras_hub insists on a width (ResNet's first stack is 64 filters), it
is kept. Each builder returns `(model, input_size)`: the image side to test with
(backbones built with `image_shape=(None, None, 3)` need one).
"""

from __future__ import annotations

import keras_hub
from keras_hub import models as M


def resnet(block_type: str = "basic_block", size: int = 32, pre_activation: bool = False):
    model = M.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16, 16],
        stackwise_num_blocks=[1, 1, 1], stackwise_num_strides=[1, 2, 2], block_type=block_type,
        use_pre_activation=pre_activation, image_shape=(size, size, 3),
    )  # fmt: skip
    return model, size


def mobilenetv3():
    model = M.MobileNetBackbone(
        stackwise_expansion=[[16, 24], [32, 48]], stackwise_num_blocks=[2, 2],
        stackwise_num_filters=[[8, 8], [16, 16]], stackwise_kernel_size=[[3, 3], [5, 5]],
        stackwise_num_strides=[[2, 1], [2, 1]], stackwise_se_ratio=[[None, None], [0.25, 0.25]],
        stackwise_activation=[["relu", "relu"], ["hard_swish", "hard_swish"], ["hard_swish"]],
        stackwise_padding=[[1, 1], [2, 2]], output_num_filters=32, input_activation="hard_swish",
        output_activation="hard_swish", input_num_filters=8, image_shape=(32, 32, 3), depthwise_filters=8,
        depthwise_stride=2, depthwise_residual=False, squeeze_and_excite=0.5, last_layer_filter=48,
    )  # fmt: skip
    return model, 32


def _efficientnet(block_types, ratios, se, repeats, filters_in, filters_out, strides, kernels):
    n = len(block_types)
    model = M.EfficientNetBackbone(
        stackwise_kernel_sizes=kernels, stackwise_num_repeats=repeats, stackwise_input_filters=filters_in,
        stackwise_output_filters=filters_out, stackwise_expansion_ratios=ratios,
        stackwise_squeeze_and_excite_ratios=se, stackwise_strides=strides, stackwise_block_types=block_types,
        stackwise_force_input_filters=[0] * n, stackwise_nores_option=[False] * n,
        stackwise_width_coefficients=[1.0] * n, stackwise_depth_coefficients=[1.0] * n,
        input_shape=(32, 32, 3), num_features=32, dropout=0.0,
    )  # fmt: skip
    return model, 32


def efficientnetv2():
    """FusedMBConv and MBConv blocks (composite layers in keras_hub)."""
    return _efficientnet(
        ["fused", "fused", "unfused", "unfused"], [1, 4, 4, 4], [0.0, 0.0, 0.25, 0.25], [1, 2, 1, 2],
        [8, 8, 16, 16], [8, 16, 16, 24], [1, 2, 2, 1], [3, 3, 3, 3],
    )  # fmt: skip


def efficientnet_v1():
    """EfficientNet-B0-style blocks (written functionally in keras_hub)."""
    return _efficientnet(["v1", "v1"], [1, 6], [0.25, 0.25], [1, 2], [8, 8], [8, 16], [1, 2], [3, 5])


def mit(size: int = 32):
    model = M.MiTBackbone(
        layerwise_depths=[1, 1], image_shape=(size, size, 3), hidden_dims=[8, 16], num_layers=2,
        layerwise_num_heads=[1, 2], layerwise_sr_ratios=[4, 2], max_drop_path_rate=0.0,
        layerwise_patch_sizes=[7, 3], layerwise_strides=[4, 2],
    )  # fmt: skip
    return model, size


def vit():
    return M.ViTBackbone(image_shape=(16, 16, 3), patch_size=(4, 4), num_layers=2, num_heads=2, hidden_dim=8,
                         mlp_dim=16), 16  # fmt: skip


def hgnetv2():
    model = M.HGNetV2Backbone(
        embedding_size=16, stem_channels=[3, 8, 16], hidden_act="relu", use_learnable_affine_block=False,
        image_shape=(32, 32, 3), depths=[1, 1], hidden_sizes=[16, 32],
        stackwise_stage_filters=[[16, 8, 16, 1, 1, 3], [16, 8, 32, 1, 1, 3]], apply_downsample=[False, True],
        use_lightweight_conv_block=[False, False], out_features=["stage1", "stage2"],
    )  # fmt: skip
    return model, 32


def cspnet():
    model = M.CSPNetBackbone(
        stem_filters=8, stem_kernel_size=3, stem_strides=1, stackwise_strides=2, stackwise_depth=[1, 1],
        stackwise_num_filters=[8, 16], image_shape=(32, 32, 3), down_growth=True, bottle_ratio=(0.5, 1.0),
        block_ratio=(1.0, 0.5), expand_ratio=(2.0, 1.0), block_type="dark_block", stage_type="csp",
        stem_padding="same",
    )  # fmt: skip
    return model, 32


def densenet():
    return M.DenseNetBackbone(stackwise_num_repeats=[1, 2], compression_ratio=0.5, growth_rate=4,
                              image_shape=(32, 32, 3)), 32  # fmt: skip


def vgg():
    return M.VGGBackbone(stackwise_num_repeats=[1, 2], stackwise_num_filters=[8, 16], image_shape=(16, 16, 3)), 16


def xception():
    model = M.XceptionBackbone(stackwise_conv_filters=[[8, 16], [16, 16]], stackwise_pooling=[True, False],
                               image_shape=(None, None, 3))  # fmt: skip
    return model, 64


def deeplabv3():
    encoder, _ = resnet(size=64)
    model = M.DeepLabV3Backbone(
        image_encoder=encoder, low_level_feature_key="P2", spatial_pyramid_pooling_key="P4",
        dilation_rates=[2, 4], upsampling_size=4, image_shape=(64, 64, 3), projection_filters=8,
    )  # fmt: skip
    return model, 64


def retinanet_backbone():
    encoder, _ = resnet(size=64)
    return M.RetinaNetBackbone(image_encoder=encoder, min_level=3, max_level=4, use_p5=False,
                               image_shape=(64, 64, 3)), 64  # fmt: skip


def segformer():
    encoder, _ = mit(32)
    return M.SegFormerBackbone(image_encoder=encoder, projection_filters=8), 32


def resnet_classifier(backbone=None):
    backbone = backbone if backbone is not None else resnet()[0]
    return M.ResNetImageClassifier(backbone=backbone, num_classes=3, pooling="avg", activation=None), 32


def deeplabv3_segmenter():
    return M.DeepLabV3ImageSegmenter(backbone=deeplabv3()[0], num_classes=2), 64


def retinanet_detector():
    from keras_hub.src.layers.modeling.anchor_generator import AnchorGenerator
    from keras_hub.src.models.retinanet.retinanet_label_encoder import RetinaNetLabelEncoder

    anchors = AnchorGenerator(bounding_box_format="yxyx", min_level=3, max_level=4, num_scales=3,
                              aspect_ratios=[0.5, 1.0, 2.0], anchor_size=4)  # fmt: skip
    model = M.RetinaNetObjectDetector(
        backbone=retinanet_backbone()[0], anchor_generator=anchors, num_classes=3, bounding_box_format="yxyx",
        label_encoder=RetinaNetLabelEncoder(bounding_box_format="yxyx", anchor_generator=anchors),
    )  # fmt: skip
    return model, 64


#: name -> (family, builder): every keras_hub vision backbone buildable small, and task models.
BUILDERS = {
    "ResNet (basic)": ("ResNet", resnet),
    "ResNet (bottleneck)": ("ResNet", lambda: resnet("bottleneck_block")),
    "ResNetV2 (pre-activation)": ("ResNet", lambda: resnet(pre_activation=True)),
    "MobileNetV3": ("MobileNet", mobilenetv3),
    "EfficientNet (B0-style)": ("EfficientNet", efficientnet_v1),
    "EfficientNetV2": ("EfficientNet", efficientnetv2),
    "MiT": ("MiT", mit),
    "ViT": ("ViT", vit),
    "HGNetV2": ("HGNetV2", hgnetv2),
    "CSPNet": ("CSPNet", cspnet),
    "DenseNet": ("DenseNet", densenet),
    "VGG": ("VGG", vgg),
    "Xception": ("Xception", xception),
    "DeepLabV3": ("DeepLabV3", deeplabv3),
    "RetinaNet backbone": ("RetinaNet", retinanet_backbone),
    "SegFormer": ("SegFormer", segformer),
    "ResNetImageClassifier": ("task: classifier", resnet_classifier),
    "DeepLabV3ImageSegmenter": ("task: segmenter", deeplabv3_segmenter),
    "RetinaNetObjectDetector": ("task: detector", retinanet_detector),
}

VERSION = keras_hub.__version__
