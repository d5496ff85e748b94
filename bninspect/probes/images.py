"""Decode and resize images with Pillow, on any backend: for `--data DIRECTORY`.

Decoding does not need TensorFlow (a JAX or torch user has none), and the pixels a model sees
are the same whichever backend runs it. The resize is TensorFlow's `tf.image.resize(...,
method="bilinear")` (what `keras.utils.image_dataset_from_directory` uses) written in NumPy:
half-pixel centres, no antialiasing, equal to TensorFlow's to float rounding (measured: at most
0.004 on the 0-255 scale). PNG pixels are TensorFlow's exactly; JPEG pixels are libjpeg's accurate
integer DCT, which TensorFlow gives with `dct_method="INTEGER_ACCURATE"` (its default, the fast
DCT, differs by up to 5 levels); grayscale conversion can differ from TensorFlow's by 1 level.

Layer: probes (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from bninspect.data import DataError
from bninspect.errors import MissingExtra

# An image file declaring more pixels than this is refused before it is decoded: a small PNG can
# declare gigapixels (Pillow's own bomb check only warns below twice its 89-megapixel default).
MAX_IMAGE_PIXELS = 1 << 26


def decode_images(paths: Sequence[str], height: int, width: int, channels: int) -> np.ndarray:
    """float32 array (n, height, width, channels) with the decoded pixel values (0-255), bilinear resize."""
    try:
        from PIL import Image
    except ImportError:
        raise MissingExtra("decoding images (--data DIRECTORY)", "Pillow", "tensorflow") from None
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise DataError(f"{path}: refused: the image declares {image.width}x{image.height} pixels, "
                                    f"above bninspect's bound of {MAX_IMAGE_PIXELS} pixels")
                pixels = np.asarray(_converted(image, channels))
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            reason = " ".join(str(error).split())[:200] or type(error).__name__
            raise DataError(f"{path}: cannot be decoded as an image ({reason})") from None
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        images.append(resize_bilinear(pixels.astype(np.float32), height, width))
    return np.stack(images).astype(np.float32, copy=False)


def _converted(image, channels: int):
    """The image with `channels` channels (values 0-255), as TensorFlow's decode_image(channels=...)."""
    from PIL import Image

    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode.startswith("I"):
        # 16-bit PNGs: 0-65535 scaled to 0-255, as a uint8 decode does.
        image = Image.fromarray((np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8))
    return image.convert(mode) if image.mode != mode else image


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w, c) -> (height, width, c) float32, as tf.image.resize(method="bilinear", antialias=False)."""
    rows = _sample_grid(image.shape[0], height)
    columns = _sample_grid(image.shape[1], width)
    top, bottom, row_weight = rows
    left, right, column_weight = columns
    upper = image[top] * (1 - row_weight)[:, None, None] + image[bottom] * row_weight[:, None, None]
    resized = upper[:, left] * (1 - column_weight)[None, :, None] + upper[:, right] * column_weight[None, :, None]
    return resized.astype(np.float32)


def _sample_grid(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index: the two input indices to blend and the weight of the second
    (half-pixel centres, clamped at the borders, as TensorFlow's ResizeBilinear)."""
    scale = size_in / size_out
    position = (np.arange(size_out, dtype=np.float64) + 0.5) * scale - 0.5
    low = np.floor(position)
    weight = (position - low).astype(np.float32)
    low_index = np.clip(low.astype(np.int64), 0, size_in - 1)
    high_index = np.clip(low.astype(np.int64) + 1, 0, size_in - 1)
    weight = np.where(position < 0, 0.0, weight).astype(np.float32)
    return low_index, high_index, weight
