"""A tf-keras subclassed model (saved as a SavedModel by `code_models.tf_keras_subclassed_savedmodel`),
also the `--custom-objects` file that gives tf-keras its class when the model is loaded."""

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
