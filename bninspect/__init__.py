"""bninspect: find BatchNormalization problems in saved Keras models."""

__version__ = "0.1.0"
