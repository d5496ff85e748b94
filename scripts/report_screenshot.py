"""Write the README screenshot `docs/report.png`: `bninspect report` on a MobileNetV2 backbone
(52 BN layers) with plausible statistics and a few planted problems, shown by headless Chromium
at 1100 x 2000 pixels.

The backbone is built with Keras (`weights=None`, nothing downloaded); its BN statistics are
drawn at random, wider with the depth, then three layers get gamma 0 in two channels (BN006) and
two get a collapsed, amplified variance (BN005). Needs TensorFlow/Keras and `chromium`.

    python scripts/report_screenshot.py [--output docs/report.png]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WINDOW = (1100, 2000)


def build_model(path: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None, include_top=False)
    rng = np.random.default_rng(0)
    bn_layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for index, layer in enumerate(bn_layers):
        channels = layer.get_weights()[0].shape
        depth = index / len(bn_layers)
        gamma = rng.uniform(0.6, 1.4, channels)
        beta = rng.normal(0.0, 0.2, channels)
        mean = rng.normal(0.0, 0.5 + depth, channels)
        variance = np.exp(rng.normal(np.log(0.5 + 3 * depth), 0.6, channels))
        if index in (9, 23, 40):
            gamma[[1, 4]] = 0.0
        if index in (15, 31):
            variance[2] = 1e-7
        layer.set_weights([array.astype(np.float32) for array in (gamma, beta, mean, variance)])
    model.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "report.png")
    args = parser.parse_args()
    browser = shutil.which("chromium")
    if browser is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        model = work / "mobilenet_v2.keras"
        build_model(model)
        page = work / "report.html"
        # Run in the work directory so that the page names the file, not the temporary directory.
        subprocess.run([sys.executable, "-m", "bninspect", "report", model.name, "-o", str(page)], check=True,
                       cwd=work, env={**os.environ, "PYTHONPATH": str(ROOT)})
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", f"--user-data-dir={work / 'profile'}",
                        f"--screenshot={args.output.resolve()}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                        page.as_uri()], check=True, capture_output=True)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
