"""Decode and resize images with TensorFlow (no PIL needed): for `--data DIRECTORY`.

Layer: probes (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from bninspect.data import DataError


def decode_images(paths: Sequence[str], height: int, width: int, channels: int) -> np.ndarray:
    """float32 array (n, height, width, channels) with the decoded pixel values (0-255), bilinear resize."""
    from bninspect.tf_runtime import import_tensorflow

    tf = import_tensorflow(quiet=False, keras=False, needed_for="decoding images")
    images = []
    for path in paths:
        try:
            raw = tf.io.read_file(path)
            image = tf.io.decode_image(raw, channels=channels, expand_animations=False)
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.PermissionDeniedError) as error:
            reason = " ".join(str(error.message).split())[:200]
            raise DataError(f"{path}: cannot be decoded as an image ({reason})") from None
        images.append(tf.image.resize(tf.cast(image, tf.float32), (height, width), method="bilinear").numpy())
    return np.stack(images).astype(np.float32, copy=False)
