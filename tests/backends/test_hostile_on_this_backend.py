"""Hostile model files and data on this process's backend: what one batch would allocate is
refused before the backend allocates it (the TensorFlow graph, the JAX jaxpr, the layer outputs a
functional model declares on PyTorch), and image files are bounded before Pillow decodes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hostile_files import png_images, upsampling_instead_of_pooling
from test_hostile_probe import DATA, assert_one_line_error, assert_quick_and_small, run_cli


def test_a_huge_tensor_inside_the_model_is_refused_before_it_runs(backend, tmp_path):
    path = upsampling_instead_of_pooling(tmp_path, size=2000)
    run = run_cli("probe", str(path), "--data", str(DATA))
    line = assert_one_line_error(run, path, "a tensor of", "one sample alone is above it")
    assert "layer pool1 (UpSampling2D)" in line, line  # JAX: the jaxpr's scope names the layer
    assert_quick_and_small(run)
    recalibrated = tmp_path / "out.keras"
    run = run_cli("recalibrate", str(path), "--data", str(DATA), "-o", str(recalibrated))
    assert_one_line_error(run, path, "one sample alone is above it")
    assert not recalibrated.exists()


def _image_declaring(path: Path, width: int, height: int) -> Path:
    """A PNG of one grey level: a few hundred KB that declare width x height pixels."""
    from PIL import Image

    Image.new("L", (width, height), 7).save(path)
    return path


def test_an_image_declaring_too_many_pixels_is_refused_before_it_is_decoded(backend, tmp_path):
    images = png_images(tmp_path / "images")
    bomb = _image_declaring(images / "zz_bomb.png", 9000, 9000)  # 81 megapixels in a small file
    assert bomb.stat().st_size < 1 << 20
    model = Path(__file__).resolve().parents[2] / "sample_models" / "cnn_trained.keras"
    run = run_cli("probe", str(model), "--data", str(images))
    assert run.returncode == 2, run.stderr
    (line,) = run.stderr.splitlines()
    assert "zz_bomb.png: refused: the image declares 9000x9000 pixels" in line
    assert_quick_and_small(run)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\nnot really", b"GIF89a" + bytes(40)])
def test_a_file_that_is_not_an_image_is_one_line(backend, tmp_path, content):
    images = png_images(tmp_path / "images")
    (images / "broken.png").write_bytes(content)
    model = Path(__file__).resolve().parents[2] / "sample_models" / "cnn_trained.keras"
    run = run_cli("probe", str(model), "--data", str(images))
    assert run.returncode == 2, run.stderr
    (line,) = run.stderr.splitlines()
    assert "broken.png: cannot be decoded as an image" in line and "Traceback" not in run.stderr


def test_the_images_a_model_sees_are_the_same_on_every_backend(backend, tmp_path):
    """Pillow decodes and NumPy resizes: no backend op touches the pixels."""
    from bninspect.probes.images import decode_images

    images = png_images(tmp_path / "images", count=2, side=10)
    decoded = decode_images(sorted(str(p) for p in images.iterdir()), 16, 16, 3)
    assert decoded.shape == (2, 16, 16, 3) and decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded[0, 5, 5], [10.0, 200.0, 30.0])
