"""Image classification: small versions of keras.io vision examples."""

from __future__ import annotations

import keras
from keras import layers, ops

from zoo.registry import KERAS_IO, example

serializable = keras.saving.register_keras_serializable(package="zoo")


@example("image classification", "Simple MNIST convnet", KERAS_IO + "vision/mnist_convnet/")
def mnist_convnet():
    """Sequential Conv2D/MaxPooling2D stack, Flatten, Dropout, softmax Dense."""
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            layers.Conv2D(8, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Conv2D(16, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(10, activation="softmax"),
        ],
        name="mnist_convnet",
    )


@example(
    "image classification",
    "Image classification from scratch (small Xception)",
    KERAS_IO + "vision/image_classification_from_scratch/",
    notes="augmentation inside the model (the example's option 1); widths 128..1024 -> 8..64",
)
def xception_from_scratch():
    """Rescaling, augmentation, SeparableConv2D blocks with strided 1x1 residuals, GAP, Dense."""
    inputs = keras.Input(shape=(32, 32, 3))
    x = layers.RandomFlip("horizontal")(inputs)
    x = layers.RandomRotation(0.1)(x)
    x = layers.Rescaling(1.0 / 255)(x)
    x = layers.Conv2D(8, 3, strides=2, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    previous_block_activation = x
    for size in [16, 32, 46]:
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(size, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(size, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = layers.Conv2D(size, 1, strides=2, padding="same")(previous_block_activation)
        x = layers.add([x, residual])
        previous_block_activation = x
    x = layers.SeparableConv2D(64, 3, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.25)(x)
    outputs = layers.Dense(1, activation=None)(x)
    return keras.Model(inputs, outputs, name="xception_from_scratch")


@example("image classification", "Image classification with ConvMixer", KERAS_IO + "vision/convmixer/")
def convmixer():
    """Patch stem, depthwise Conv2D (groups=filters) + residual Add, pointwise Conv2D, gelu + BN."""

    def activation_block(x):
        x = layers.Activation("gelu")(x)
        return layers.BatchNormalization()(x)

    def conv_stem(x, filters, patch_size):
        x = layers.Conv2D(filters, kernel_size=patch_size, strides=patch_size)(x)
        return activation_block(x)

    def conv_mixer_block(x, filters, kernel_size):
        x0 = x
        x = layers.Conv2D(filters, kernel_size=kernel_size, groups=filters, padding="same")(x)
        x = layers.Add()([activation_block(x), x0])
        x = layers.Conv2D(filters, kernel_size=1)(x)
        return activation_block(x)

    inputs = keras.Input((32, 32, 3))
    x = layers.Rescaling(scale=1.0 / 255)(inputs)
    x = conv_stem(x, 16, 2)
    for _ in range(2):
        x = conv_mixer_block(x, 16, 5)
    x = layers.GlobalAvgPool2D()(x)
    outputs = layers.Dense(10, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="convmixer")


@serializable
class MixerPatches(layers.Layer):
    """The MLP-Mixer example's `Patches`: `ops.image.extract_patches` then `ops.reshape`."""

    def __init__(self, patch_size, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size

    def call(self, x):
        patches = keras.ops.image.extract_patches(x, self.patch_size)
        batch_size = keras.ops.shape(patches)[0]
        num_patches = keras.ops.shape(patches)[1] * keras.ops.shape(patches)[2]
        patch_dim = keras.ops.shape(patches)[3]
        return keras.ops.reshape(patches, (batch_size, num_patches, patch_dim))

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size}


@serializable
class MLPMixerLayer(layers.Layer):
    """Token mixing (transpose, MLP, transpose) and channel mixing, one shared LayerNorm."""

    def __init__(self, num_patches, hidden_units, dropout_rate, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_patches, self.hidden_units, self.dropout_rate = num_patches, hidden_units, dropout_rate
        self.mlp1 = keras.Sequential(
            [
                layers.Dense(units=num_patches, activation="gelu"),
                layers.Dense(units=num_patches),
                layers.Dropout(rate=dropout_rate),
            ]
        )
        self.mlp2 = keras.Sequential(
            [
                layers.Dense(units=num_patches, activation="gelu"),
                layers.Dense(units=hidden_units),
                layers.Dropout(rate=dropout_rate),
            ]
        )
        self.normalize = layers.LayerNormalization(epsilon=1e-6)

    def build(self, input_shape):
        return super().build(input_shape)

    def call(self, inputs):
        x = self.normalize(inputs)
        x_channels = keras.ops.transpose(x, axes=(0, 2, 1))
        mlp1_outputs = self.mlp1(x_channels)
        mlp1_outputs = keras.ops.transpose(mlp1_outputs, axes=(0, 2, 1))
        x = mlp1_outputs + inputs
        x_patches = self.normalize(x)
        mlp2_outputs = self.mlp2(x_patches)
        return x + mlp2_outputs

    def get_config(self):
        return {
            **super().get_config(),
            "num_patches": self.num_patches,
            "hidden_units": self.hidden_units,
            "dropout_rate": self.dropout_rate,
        }


def _augmentation(size: int, extra=()):
    return keras.Sequential(
        [
            layers.Normalization(mean=[0.5, 0.5, 0.5], variance=[0.25, 0.25, 0.25]),
            layers.Resizing(size, size),
            layers.RandomFlip("horizontal"),
            *extra,
            layers.RandomZoom(height_factor=0.2, width_factor=0.2),
        ],
        name="data_augmentation",
    )


@example(
    "image classification",
    "Image classification with modern MLP models (MLP-Mixer)",
    KERAS_IO + "vision/mlp_image_classification/",
    notes="Normalization given mean/variance instead of adapt()",
)
def mlp_mixer():
    """Augmentation Sequential, custom Patches layer, Dense embedding, a Sequential of composite mixer blocks."""
    inputs = layers.Input(shape=(32, 32, 3))
    augmented = _augmentation(32)(inputs)
    patches = MixerPatches(8)(augmented)
    x = layers.Dense(units=16)(patches)
    blocks = keras.Sequential([MLPMixerLayer(16, 16, 0.2) for _ in range(2)])
    x = blocks(x)
    representation = layers.GlobalAveragePooling1D()(x)
    representation = layers.Dropout(rate=0.2)(representation)
    logits = layers.Dense(10)(representation)
    return keras.Model(inputs=inputs, outputs=logits, name="mlp_mixer")


@serializable
class Patches(layers.Layer):
    """The ViT example's `Patches` (its `__init__` takes no `**kwargs`, as in the example)."""

    def __init__(self, patch_size):
        super().__init__()
        self.patch_size = patch_size

    def call(self, images):
        input_shape = ops.shape(images)
        batch_size, height, width, channels = input_shape[0], input_shape[1], input_shape[2], input_shape[3]
        num_patches_h = height // self.patch_size
        num_patches_w = width // self.patch_size
        patches = keras.ops.image.extract_patches(images, size=self.patch_size)
        return ops.reshape(
            patches,
            (batch_size, num_patches_h * num_patches_w, self.patch_size * self.patch_size * channels),
        )

    def get_config(self):
        config = super().get_config()
        config.update({"patch_size": self.patch_size})
        return config


@serializable
class PatchEncoder(layers.Layer):
    """The ViT example's `PatchEncoder`: Dense projection + learned position Embedding."""

    def __init__(self, num_patches, projection_dim):
        super().__init__()
        self.num_patches = num_patches
        self.projection = layers.Dense(units=projection_dim)
        self.position_embedding = layers.Embedding(input_dim=num_patches, output_dim=projection_dim)

    def call(self, patch):
        positions = ops.expand_dims(ops.arange(start=0, stop=self.num_patches, step=1), axis=0)
        projected_patches = self.projection(patch)
        return projected_patches + self.position_embedding(positions)

    def get_config(self):
        config = super().get_config()
        config.update({"num_patches": self.num_patches})
        return config


def _mlp(x, hidden_units, dropout_rate):
    for units in hidden_units:
        x = layers.Dense(units, activation=keras.activations.gelu)(x)
        x = layers.Dropout(dropout_rate)(x)
    return x


@example(
    "image classification",
    "Image classification with Vision Transformer",
    KERAS_IO + "vision/image_classification_with_vision_transformer/",
    notes="custom layers kept as written: their get_config does not match __init__ (no **kwargs)",
)
def vit():
    """Patches + PatchEncoder custom layers, pre-norm MultiHeadAttention blocks, Flatten head."""
    inputs = keras.Input(shape=(32, 32, 3))
    augmented = _augmentation(32, extra=[layers.RandomRotation(factor=0.02)])(inputs)
    patches = Patches(8)(augmented)
    encoded_patches = PatchEncoder(16, 16)(patches)
    for _ in range(2):
        x1 = layers.LayerNormalization(epsilon=1e-6)(encoded_patches)
        attention_output = layers.MultiHeadAttention(num_heads=2, key_dim=16, dropout=0.1)(x1, x1)
        x2 = layers.Add()([attention_output, encoded_patches])
        x3 = layers.LayerNormalization(epsilon=1e-6)(x2)
        x3 = _mlp(x3, hidden_units=[32, 16], dropout_rate=0.1)
        encoded_patches = layers.Add()([x3, x2])
    representation = layers.LayerNormalization(epsilon=1e-6)(encoded_patches)
    representation = layers.Flatten()(representation)
    representation = layers.Dropout(0.5)(representation)
    features = _mlp(representation, hidden_units=[32, 16], dropout_rate=0.5)
    logits = layers.Dense(10)(features)
    return keras.Model(inputs=inputs, outputs=logits, name="vit")


@serializable
class PatchExtract(layers.Layer):
    def __init__(self, patch_size, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size

    def call(self, x):
        B, C = ops.shape(x)[0], ops.shape(x)[-1]
        x = ops.image.extract_patches(x, self.patch_size)
        x = ops.reshape(x, (B, -1, self.patch_size * self.patch_size * C))
        return x

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size}


@serializable
class PatchEmbedding(layers.Layer):
    def __init__(self, num_patch, embed_dim, **kwargs):
        super().__init__(**kwargs)
        self.num_patch, self.embed_dim = num_patch, embed_dim
        self.proj = layers.Dense(embed_dim)
        self.pos_embed = layers.Embedding(input_dim=num_patch, output_dim=embed_dim)

    def call(self, patch):
        pos = ops.arange(start=0, stop=self.num_patch, step=1)
        return self.proj(patch) + self.pos_embed(pos)

    def get_config(self):
        return {**super().get_config(), "num_patch": self.num_patch, "embed_dim": self.embed_dim}


def _external_attention(x, dim, num_heads, dim_coefficient=4, attention_dropout=0, projection_dropout=0):
    _, num_patch, channel = x.shape
    num_heads = num_heads * dim_coefficient
    x = layers.Dense(dim * dim_coefficient)(x)
    x = ops.reshape(x, (-1, num_patch, num_heads, dim * dim_coefficient // num_heads))
    x = ops.transpose(x, axes=[0, 2, 1, 3])
    attn = layers.Dense(dim // dim_coefficient)(x)
    attn = layers.Softmax(axis=2)(attn)
    attn = attn / (1e-9 + ops.sum(attn, axis=-1, keepdims=True))
    attn = layers.Dropout(attention_dropout)(attn)
    x = layers.Dense(dim * dim_coefficient // num_heads)(attn)
    x = ops.transpose(x, axes=[0, 2, 1, 3])
    x = ops.reshape(x, [-1, num_patch, dim * dim_coefficient])
    x = layers.Dense(dim)(x)
    return layers.Dropout(projection_dropout)(x)


@example(
    "image classification",
    "Image classification with EANet (External Attention Transformer)",
    KERAS_IO + "vision/eanet/",
    notes="head count and widths shrunk",
)
def eanet():
    """External attention written with keras.ops (reshape/transpose) between Dense layers, pre-norm blocks."""
    inputs = layers.Input(shape=(32, 32, 3))
    x = _augmentation(32, extra=[layers.RandomRotation(factor=0.1), layers.RandomContrast(factor=0.1)])(inputs)
    x = PatchExtract(4)(x)
    x = PatchEmbedding(64, 16)(x)
    for _ in range(2):
        residual_1 = x
        x = layers.LayerNormalization(epsilon=1e-5)(x)
        x = _external_attention(x, 16, 2, 4, 0.1, 0.1)
        x = layers.add([x, residual_1])
        residual_2 = x
        x = layers.LayerNormalization(epsilon=1e-5)(x)
        x = layers.Dense(32, activation=ops.gelu)(x)
        x = layers.Dropout(0.2)(x)
        x = layers.Dense(16)(x)
        x = layers.Dropout(0.2)(x)
        x = layers.add([x, residual_2])
    x = layers.GlobalAvgPool1D()(x)
    outputs = layers.Dense(10, activation="softmax")(x)
    return keras.Model(inputs=inputs, outputs=outputs, name="eanet")


@serializable
class Involution(keras.layers.Layer):
    """The involution example's layer: a kernel-generating Sequential, Reshapes, patches, multiply-sum."""

    def __init__(self, channel, group_number, kernel_size, stride, reduction_ratio, name):
        super().__init__(name=name)
        self.channel = channel
        self.group_number = group_number
        self.kernel_size = kernel_size
        self.stride = stride
        self.reduction_ratio = reduction_ratio

    def build(self, input_shape):
        (_, height, width, num_channels) = input_shape
        height = height // self.stride
        width = width // self.stride
        self.stride_layer = (
            keras.layers.AveragePooling2D(pool_size=self.stride, strides=self.stride, padding="same")
            if self.stride > 1
            else keras.layers.Identity()
        )
        self.kernel_gen = keras.Sequential(
            [
                keras.layers.Conv2D(filters=self.channel // self.reduction_ratio, kernel_size=1),
                keras.layers.BatchNormalization(),
                keras.layers.ReLU(),
                keras.layers.Conv2D(filters=self.kernel_size * self.kernel_size * self.group_number, kernel_size=1),
            ]
        )
        self.kernel_reshape = keras.layers.Reshape(
            target_shape=(height, width, self.kernel_size * self.kernel_size, 1, self.group_number)
        )
        self.input_patches_reshape = keras.layers.Reshape(
            target_shape=(
                height,
                width,
                self.kernel_size * self.kernel_size,
                num_channels // self.group_number,
                self.group_number,
            )
        )
        self.output_reshape = keras.layers.Reshape(target_shape=(height, width, num_channels))

    def call(self, x):
        kernel_input = self.stride_layer(x)
        kernel = self.kernel_gen(kernel_input)
        kernel = self.kernel_reshape(kernel)
        input_patches = ops.image.extract_patches(x, size=self.kernel_size, strides=self.stride, padding="same")
        input_patches = self.input_patches_reshape(input_patches)
        output = ops.multiply(kernel, input_patches)
        output = ops.sum(output, axis=3)
        output = self.output_reshape(output)
        return output, kernel

    def get_config(self):
        return {
            "channel": self.channel,
            "group_number": self.group_number,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "reduction_ratio": self.reduction_ratio,
            "name": self.name,
        }


@example(
    "image classification",
    "Involutional neural networks",
    KERAS_IO + "vision/involution/",
    notes="a Conv2D(8) stem before the involutions so that they have channels to prune around",
)
def involution():
    """Three custom Involution layers (two outputs each) with ReLU/MaxPooling2D, Flatten, Dense head."""
    inputs = keras.Input(shape=(16, 16, 3))
    x = layers.Conv2D(8, 3, padding="same")(inputs)
    x, _ = Involution(channel=8, group_number=1, kernel_size=3, stride=1, reduction_ratio=2, name="inv_1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D((2, 2))(x)
    x, _ = Involution(channel=8, group_number=1, kernel_size=3, stride=1, reduction_ratio=2, name="inv_2")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    outputs = keras.layers.Dense(10)(x)
    return keras.Model(inputs=[inputs], outputs=[outputs], name="inv_model")


@serializable
class CCTTokenizer(layers.Layer):
    def __init__(self, kernel_size=3, stride=1, padding=1, pooling_kernel_size=3, pooling_stride=2,
                 num_conv_layers=2, num_output_channels=(8, 16), positional_emb=True, **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        self.config_ = dict(kernel_size=kernel_size, stride=stride, padding=padding,
                            pooling_kernel_size=pooling_kernel_size, pooling_stride=pooling_stride,
                            num_conv_layers=num_conv_layers, num_output_channels=list(num_output_channels),
                            positional_emb=positional_emb)  # fmt: skip
        self.conv_model = keras.Sequential()
        for i in range(num_conv_layers):
            self.conv_model.add(
                layers.Conv2D(num_output_channels[i], kernel_size, stride, padding="valid", use_bias=False,
                              activation="relu", kernel_initializer="he_normal")  # fmt: skip
            )
            self.conv_model.add(layers.ZeroPadding2D(padding))
            self.conv_model.add(layers.MaxPooling2D(pooling_kernel_size, pooling_stride, "same"))
        self.positional_emb = positional_emb

    def call(self, images):
        outputs = self.conv_model(images)
        return keras.ops.reshape(
            outputs, (-1, keras.ops.shape(outputs)[1] * keras.ops.shape(outputs)[2], keras.ops.shape(outputs)[-1])
        )

    def get_config(self):
        return {**super().get_config(), **self.config_}


@serializable
class PositionEmbedding(keras.layers.Layer):
    def __init__(self, sequence_length, initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.sequence_length = int(sequence_length)
        self.initializer = keras.initializers.get(initializer)

    def get_config(self):
        return {
            **super().get_config(),
            "sequence_length": self.sequence_length,
            "initializer": keras.initializers.serialize(self.initializer),
        }

    def build(self, input_shape):
        feature_size = input_shape[-1]
        self.position_embeddings = self.add_weight(
            name="embeddings", shape=[self.sequence_length, feature_size], initializer=self.initializer
        )
        super().build(input_shape)

    def call(self, inputs, start_index=0):
        shape = keras.ops.shape(inputs)
        feature_length, sequence_length = shape[-1], shape[-2]
        position_embeddings = keras.ops.convert_to_tensor(self.position_embeddings)
        position_embeddings = keras.ops.slice(
            position_embeddings, (start_index, 0), (sequence_length, feature_length)
        )
        return keras.ops.broadcast_to(position_embeddings, shape)

    def compute_output_shape(self, input_shape):
        return input_shape


@serializable
class SequencePooling(layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.attention = layers.Dense(1)

    def call(self, x):
        attention_weights = keras.ops.softmax(self.attention(x), axis=1)
        attention_weights = keras.ops.transpose(attention_weights, axes=(0, 2, 1))
        weighted_representation = keras.ops.matmul(attention_weights, x)
        return keras.ops.squeeze(weighted_representation, -2)


@serializable
class StochasticDepth(layers.Layer):
    def __init__(self, drop_prop, **kwargs):
        super().__init__(**kwargs)
        self.drop_prob = drop_prop
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, x, training=None):
        if training:
            keep_prob = 1 - self.drop_prob
            shape = (keras.ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
            random_tensor = keep_prob + keras.random.uniform(shape, 0, 1, seed=self.seed_generator)
            random_tensor = keras.ops.floor(random_tensor)
            return (x / keep_prob) * random_tensor
        return x

    def get_config(self):
        return {**super().get_config(), "drop_prop": self.drop_prob}


@example(
    "image classification",
    "Compact Convolutional Transformers",
    KERAS_IO + "vision/cct/",
    notes="widths 64/128 -> 8/16, 2 transformer layers",
)
def cct():
    """Conv tokenizer layer, PositionEmbedding, MHA blocks with StochasticDepth, attention SequencePooling."""
    inputs = layers.Input((32, 32, 3))
    augmented = keras.Sequential(
        [layers.Rescaling(scale=1.0 / 255), layers.RandomCrop(32, 32), layers.RandomFlip("horizontal")],
        name="data_augmentation",
    )(inputs)
    encoded_patches = CCTTokenizer()(augmented)
    sequence_length = encoded_patches.shape[1]
    encoded_patches += PositionEmbedding(sequence_length=sequence_length)(encoded_patches)
    dpr = [x for x in keras.ops.linspace(0, 0.1, 2)]
    for i in range(2):
        x1 = layers.LayerNormalization(epsilon=1e-5)(encoded_patches)
        attention_output = layers.MultiHeadAttention(num_heads=2, key_dim=16, dropout=0.1)(x1, x1)
        attention_output = StochasticDepth(float(dpr[i]))(attention_output)
        x2 = layers.Add()([attention_output, encoded_patches])
        x3 = layers.LayerNormalization(epsilon=1e-5)(x2)
        x3 = _mlp(x3, hidden_units=[16, 16], dropout_rate=0.1)
        x3 = StochasticDepth(float(dpr[i]))(x3)
        encoded_patches = layers.Add()([x3, x2])
    representation = layers.LayerNormalization(epsilon=1e-5)(encoded_patches)
    weighted_representation = SequencePooling()(representation)
    logits = layers.Dense(10)(weighted_representation)
    return keras.Model(inputs=inputs, outputs=logits, name="cct")


def _conv_block(x, filters=16, kernel_size=3, strides=2):
    return layers.Conv2D(filters, kernel_size, strides=strides, activation=keras.activations.swish, padding="same")(x)


def _correct_pad(inputs, kernel_size):
    img_dim = 2 if keras.backend.image_data_format() == "channels_first" else 1
    input_size = inputs.shape[img_dim : (img_dim + 2)]
    if isinstance(kernel_size, int):
        kernel_size = (kernel_size, kernel_size)
    if input_size[0] is None:
        adjust = (1, 1)
    else:
        adjust = (1 - input_size[0] % 2, 1 - input_size[1] % 2)
    correct = (kernel_size[0] // 2, kernel_size[1] // 2)
    return ((correct[0] - adjust[0], correct[0]), (correct[1] - adjust[1], correct[1]))


def _inverted_residual_block(x, expanded_channels, output_channels, strides=1):
    m = layers.Conv2D(expanded_channels, 1, padding="same", use_bias=False)(x)
    m = layers.BatchNormalization()(m)
    m = keras.activations.swish(m)
    if strides == 2:
        m = layers.ZeroPadding2D(padding=_correct_pad(m, 3))(m)
    m = layers.DepthwiseConv2D(3, strides=strides, padding="same" if strides == 1 else "valid", use_bias=False)(m)
    m = layers.BatchNormalization()(m)
    m = keras.activations.swish(m)
    m = layers.Conv2D(output_channels, 1, padding="same", use_bias=False)(m)
    m = layers.BatchNormalization()(m)
    if keras.ops.equal(x.shape[-1], output_channels) and strides == 1:
        return layers.Add()([m, x])
    return m


def _mobilevit_block(x, num_blocks, projection_dim, patch_size=4, strides=1):
    local_features = _conv_block(x, filters=projection_dim, strides=strides)
    local_features = _conv_block(local_features, filters=projection_dim, kernel_size=1, strides=strides)
    num_patches = int((local_features.shape[1] * local_features.shape[2]) / patch_size)
    non_overlapping_patches = layers.Reshape((patch_size, num_patches, projection_dim))(local_features)
    global_features = non_overlapping_patches
    for _ in range(num_blocks):
        x1 = layers.LayerNormalization(epsilon=1e-6)(global_features)
        attention_output = layers.MultiHeadAttention(num_heads=1, key_dim=projection_dim, dropout=0.1)(x1, x1)
        x2 = layers.Add()([attention_output, global_features])
        x3 = layers.LayerNormalization(epsilon=1e-6)(x2)
        x3 = _mlp(x3, hidden_units=[projection_dim * 2, projection_dim], dropout_rate=0.1)
        global_features = layers.Add()([x3, x2])
    folded_feature_map = layers.Reshape((*local_features.shape[1:-1], projection_dim))(global_features)
    folded_feature_map = _conv_block(folded_feature_map, filters=x.shape[-1], kernel_size=1, strides=strides)
    local_global_features = layers.Concatenate(axis=-1)([x, folded_feature_map])
    return _conv_block(local_global_features, filters=projection_dim, strides=strides)


@example(
    "image classification",
    "MobileViT: a mobile-friendly Transformer-based model",
    KERAS_IO + "vision/mobilevit/",
    notes="one MobileViT block instead of three; expansion 2; 32x32 input",
)
def mobilevit():
    """Inverted residuals with keras.activations.swish on tensors, ZeroPadding2D, unfold/fold Reshapes + MHA."""
    inputs = keras.Input((32, 32, 3))
    x = layers.Rescaling(scale=1.0 / 255)(inputs)
    x = _conv_block(x, filters=8)
    x = _inverted_residual_block(x, expanded_channels=8 * 2, output_channels=8)
    x = _inverted_residual_block(x, expanded_channels=8 * 2, output_channels=12, strides=2)
    x = _inverted_residual_block(x, expanded_channels=12 * 2, output_channels=12)
    x = _inverted_residual_block(x, expanded_channels=12 * 2, output_channels=16, strides=2)
    x = _mobilevit_block(x, num_blocks=1, projection_dim=16)
    x = _conv_block(x, filters=32, kernel_size=1, strides=1)
    x = layers.GlobalAvgPool2D()(x)
    outputs = layers.Dense(5, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="mobilevit")


@example(
    "image classification",
    "Image classification via fine-tuning with EfficientNet",
    KERAS_IO + "vision/image_classification_efficientnet_fine_tuning/",
    notes="weights=None, 32x32 input; the top as in the example",
)
def efficientnet_transfer():
    """keras.applications.EfficientNetB0 on `input_tensor`, new top: GAP, BN, Dropout, softmax Dense."""
    inputs = layers.Input(shape=(32, 32, 3))
    x = layers.RandomRotation(factor=0.15)(inputs)
    x = layers.RandomFlip()(x)
    model = keras.applications.EfficientNetB0(include_top=False, input_tensor=x, weights=None)
    model.trainable = False
    x = layers.GlobalAveragePooling2D(name="avg_pool")(model.output)
    x = layers.BatchNormalization()(x)
    x = layers.Dropout(0.2, name="top_dropout")(x)
    outputs = layers.Dense(10, activation="softmax", name="pred")(x)
    return keras.Model(inputs, outputs, name="EfficientNet")


@example(
    "image classification",
    "Transfer learning & fine-tuning (a nested base model)",
    "https://keras.io/guides/transfer_learning/",
    notes="MobileNetV2(alpha=0.35) instead of Xception to stay small; weights=None",
)
def nested_transfer():
    """A keras.applications base model called as one nested layer (`training=False`), then a new head."""
    base_model = keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), include_top=False, alpha=0.35
    )
    base_model.trainable = False
    inputs = keras.Input(shape=(32, 32, 3))
    scale_layer = keras.layers.Rescaling(scale=1 / 127.5, offset=-1)
    x = scale_layer(inputs)
    x = base_model(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(1)(x)
    return keras.Model(inputs, outputs, name="nested_transfer")
