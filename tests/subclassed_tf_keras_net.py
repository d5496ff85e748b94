"""tf-keras subclassed models (saved as SavedModels by `code_models`), also the `--custom-objects`
file that gives tf-keras their classes when a model is loaded.

- `Net`: one BN layer (`code_models.tf_keras_subclassed_savedmodel`).
- `NestedNet`: a BN layer inside a custom layer (`block/bn`) and a frozen BN head whose statistics
  never move (`code_models.tf_keras_nested_savedmodel`).
"""

import tf_keras


class Net(tf_keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = tf_keras.layers.Conv2D(4, 3, name="conv")
        self.bn = tf_keras.layers.BatchNormalization(momentum=0.1, name="bn")
        self.pool = tf_keras.layers.GlobalAveragePooling2D()
        self.out = tf_keras.layers.Dense(1)

    def call(self, x, training=None):
        return self.out(self.pool(self.bn(self.conv(x), training=training)))


class Block(tf_keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = tf_keras.layers.Conv2D(4, 3, padding="same", name="conv")
        self.bn = tf_keras.layers.BatchNormalization(momentum=0.9, name="bn")

    def call(self, x, training=None):
        return tf_keras.activations.relu(self.bn(self.conv(x), training=training))


class NestedNet(tf_keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.block = Block(name="block")
        self.pool = tf_keras.layers.GlobalAveragePooling2D()
        # trainable=False from the start: fit never updates its statistics (BN001, BN013).
        self.head_bn = tf_keras.layers.BatchNormalization(trainable=False, name="head_bn")
        self.out = tf_keras.layers.Dense(1)

    def call(self, x, training=None):
        return self.out(self.head_bn(self.pool(self.block(x, training=training)), training=training))
