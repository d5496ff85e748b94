"""A Keras 3 subclassed model and a custom layer holding BN, registered classes for the tests of code
architectures.

Imported by the fixtures that save it (`code_models.subclassed_files`), and passed to
`--custom-objects` as a file, the way a user gives bninspect the class a `.keras` file needs.
"""

import keras


@keras.saving.register_keras_serializable(package="my_package")
class Net(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(4, 3, name="conv")
        self.bn = keras.layers.BatchNormalization(momentum=0.1, name="bn")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.out = keras.layers.Dense(1)

    def call(self, x, training=None):
        return self.out(self.pool(self.bn(self.conv(x), training=training)))


@keras.saving.register_keras_serializable(package="my_package")
class BNBlock(keras.layers.Layer):
    """A custom layer holding a BN layer: a graph that has it has no config for that BN layer."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.bn = keras.layers.BatchNormalization(momentum=0.2, name="bn")

    def build(self, input_shape):
        self.bn.build(input_shape)

    def call(self, x, training=None):
        return self.bn(x, training=training)
