"""Dynamic analysis speed and memory, measured side by side with `model.predict` in one run.

Builds a small but real CNN (conv+BN blocks on 32x32x3, ~the size of a CIFAR-10 model), writes
N and 10N random samples as .npy, and runs each measurement in a fresh child process:

  predict  `model.predict` over the samples (loaded with np.load(mmap_mode="r"), batch 32)
  probe    `bninspect.probes.run_probe` over the same file (batch 32), with the same loaded model

For each: wall time of the call (model loading and TF start-up excluded, tracing included), the
peak of Python-tracked allocations (tracemalloc: numpy buffers included) and the child's peak RSS.
Targets (SPEC): probe time <= 1.5x predict time; probe memory flat from N to 10N.

Usage: python benchmarks/bench_probe.py [--samples N] [--repeat R] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, os, resource, sys, time, tracemalloc
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
sys.path.insert(0, sys.argv[4])
import numpy as np
import keras
from bninspect.probes import run_probe

mode, model_path, data_path = sys.argv[1:4]
model = keras.saving.load_model(model_path, compile=False)
# Warm up the TF runtime with one eager call outside the measurement. It traces nothing: each
# measured call pays for tracing its own function, as on a freshly loaded model.
warm = np.zeros((2,) + tuple(model.inputs[0].shape[1:]), np.float32)
model(warm, training=False)
tracemalloc.start()
started = time.perf_counter()
if mode == "predict":
    data = np.load(data_path, mmap_mode="r")
    model.predict(data, batch_size=32, verbose=0)
else:
    report = run_probe(model, data_path, batch_size=32, progress=False, thresholds={})
seconds = time.perf_counter() - started
_, traced_peak = tracemalloc.get_traced_memory()
print(json.dumps({"seconds": seconds, "traced_peak_mb": traced_peak / 2**20,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def build_model(path: Path) -> None:
    if path.exists():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3), name="image")
    x = inputs
    for block, filters in enumerate((32, 32, 64, 64, 128)):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{block}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{block}")(x)
        x = keras.layers.ReLU()(x)
        if block % 2 == 1:
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(64, use_bias=False)(x)
    x = keras.layers.BatchNormalization(name="bn_head")(x)
    x = keras.layers.ReLU()(x)
    outputs = keras.layers.Dense(10)(x)
    model = keras.Model(inputs, outputs, name="cifar_like")
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.moving_mean.shape[0]
            layer.set_weights([rng.normal(1, 0.1, channels), rng.normal(0, 0.1, channels),
                               rng.normal(0, 0.5, channels), rng.uniform(0.5, 2, channels)])
    model.save(path)


def write_samples(path: Path, samples: int) -> None:
    if path.exists():
        return
    import numpy as np

    rng = np.random.default_rng(samples)
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(samples, 32, 32, 3))
    for start in range(0, samples, 4096):
        stop = min(start + 4096, samples)
        data[start:stop] = rng.uniform(0, 1, (stop - start, 32, 32, 3))
    data.flush()


def measure(mode: str, model: Path, data: Path) -> dict:
    completed = subprocess.run([sys.executable, "-c", CHILD, mode, str(model), str(data), str(ROOT)],
                               capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000, help="N (the second size is 10N)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement; the fastest counts")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work")
    options = parser.parse_args()
    options.work.mkdir(parents=True, exist_ok=True)
    model = options.work / "probe_cnn.keras"
    build_model(model)
    sizes = (options.samples, options.samples * 10)
    results = {}
    for samples in sizes:
        data = options.work / f"probe_samples_{samples}.npy"
        write_samples(data, samples)
        for mode in ("predict", "probe"):
            runs = [measure(mode, model, data) for _ in range(options.repeat)]
            results[mode, samples] = min(runs, key=lambda run: run["seconds"])

    print(f"{'samples':>8} {'predict s':>10} {'probe s':>9} {'ratio':>6}   "
          f"{'predict MB (traced/rss)':>24} {'probe MB (traced/rss)':>22}")
    for samples in sizes:
        predict, probe = results["predict", samples], results["probe", samples]
        print(f"{samples:>8} {predict['seconds']:>10.2f} {probe['seconds']:>9.2f} "
              f"{probe['seconds'] / predict['seconds']:>6.2f}   "
              f"{predict['traced_peak_mb']:>11.1f} / {predict['max_rss_mb']:>7.0f}   "
              f"{probe['traced_peak_mb']:>9.1f} / {probe['max_rss_mb']:>7.0f}")
    small, large = results["probe", sizes[0]], results["probe", sizes[1]]
    worst_ratio = max(results["probe", n]["seconds"] / results["predict", n]["seconds"] for n in sizes)
    print(f"time: probe / predict at most {worst_ratio:.2f}x (target <= 1.5x) -> "
          f"{'ok' if worst_ratio <= 1.5 else 'MISSED'}")
    growth_traced = large["traced_peak_mb"] - small["traced_peak_mb"]
    growth_rss = large["max_rss_mb"] - small["max_rss_mb"]
    data_growth = (sizes[1] - sizes[0]) * 32 * 32 * 3 * 4 / 2**20
    print(f"memory: probe peak grows by {growth_traced:+.1f} MB traced, {growth_rss:+.0f} MB RSS from "
          f"{sizes[0]} to {sizes[1]} samples (the data grows by {data_growth:.0f} MB) -> "
          f"{'flat' if growth_traced < 0.1 * data_growth and growth_rss < 0.1 * data_growth else 'NOT flat'}")


if __name__ == "__main__":
    main()
