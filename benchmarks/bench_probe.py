"""Dynamic analysis speed and memory, measured side by side with `model.predict` in one run.

Builds a small but real CNN (conv+BN blocks on 32x32x3, ~the size of a CIFAR-10 model), writes
N and 10N random samples as .npy, and runs each measurement in a fresh child process:

  predict  `model.predict` over the samples (loaded with np.load(mmap_mode="r"), batch 32)
  probe    `bninspect.probes.run_probe` over the same file (batch 32), with the same loaded model

For each: wall time of the call (model loading and TF start-up excluded, tracing included), the
peak of Python-tracked allocations (tracemalloc: numpy buffers included), the child's peak RSS and,
sampled every few milliseconds, its peak anonymous RSS (heap, TF's allocator; file-backed pages
such as those of a memory-mapped .npy are what it leaves out).
Targets (SPEC): probe time <= 1.5x predict time; probe memory flat from N to 10N.

Peak RSS is the child's own VmHWM from /proc/self/status, not getrusage's ru_maxrss: on Linux a
child's ru_maxrss starts from its parent's peak RSS (fork and exec carry it over), so a parent that
had just written the 10N file reported that file as the child's "peak" (2,000 -> 20,000 samples:
654 -> 901 MB, where this process's VmHWM was 651 -> 900 MB after writing each file; the probe's
own peak was 652 and 651 MB). For the same reason the model and the data files are made in a child
process, which keeps this process small.

With --real, real architectures instead (`keras.applications`, built offline with weights=None,
224x224x3, random pixels 0-255): for each model, three commands, each in a fresh process that
loads the model file itself (load time included, TF start-up excluded):

  predict      keras.saving.load_model + model.predict (batch 32)
  probe        bninspect.probes.run_probe(model file, data file) (batch 32)
  recalibrate  bninspect.probes.recalibrate.recompute(model file, data file) (batch 32)

with time and the child's peak RSS (VmHWM). Targets (issues 20 and 27): probe and recalibrate at
most 1.3x the time and 1.5x the peak memory of load + predict at 144 samples; at most 1.2x the time at
1,000 samples (--large-models, the same three by default; all of it takes ~30 min on 2 cores).

With --backend tensorflow|jax|torch, every child runs Keras on that backend (KERAS_BACKEND), both
sides of each ratio alike.

Usage: python benchmarks/bench_probe.py [--backend B] [--samples N] [--repeat R] [--work DIR]
       python benchmarks/bench_probe.py --real [--backend B] [--models A,B] [--large-models A] [--repeat R]
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
import json, os, resource, sys, threading, time, tracemalloc
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
sys.path.insert(0, sys.argv[4])
import numpy as np
import keras
from bninspect.probes import run_probe


def status():
    # kB -> MB of this process's own address space; None where /proc is missing (not Linux).
    try:
        with open("/proc/self/status") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
        return {key: int(fields[key].split()[0]) / 1024 for key in ("VmHWM", "RssAnon", "RssFile")}
    except (OSError, KeyError, ValueError):
        return None


class PeakSampler(threading.Thread):
    # Peak anonymous and file-backed RSS, sampled: the kernel keeps a peak of the total only.
    def __init__(self):
        super().__init__(daemon=True)
        self.anon = self.file = 0.0
        self.done = threading.Event()

    def sample(self):
        now = status()
        if now is not None:
            self.anon, self.file = max(self.anon, now["RssAnon"]), max(self.file, now["RssFile"])

    def run(self):
        while not self.done.wait(0.005):
            self.sample()

    def stop(self):
        self.done.set()
        self.join()
        self.sample()


mode, model_path, data_path = sys.argv[1:4]
model = keras.saving.load_model(model_path, compile=False)
# Warm up the TF runtime with one eager call outside the measurement. It traces nothing: each
# measured call pays for tracing its own function, as on a freshly loaded model.
warm = np.zeros((2,) + tuple(model.inputs[0].shape[1:]), np.float32)
model(warm, training=False)
sampler = PeakSampler()
sampler.start()
tracemalloc.start()
started = time.perf_counter()
if mode == "predict":
    data = np.load(data_path, mmap_mode="r")
    model.predict(data, batch_size=32, verbose=0)
else:
    report = run_probe(model, data_path, batch_size=32, progress=False, thresholds={})
seconds = time.perf_counter() - started
_, traced_peak = tracemalloc.get_traced_memory()
sampler.stop()
final = status()
if final is None:  # no /proc: ru_maxrss (kB on Linux, bytes on macOS), which may include the parent's peak
    scale = 2**20 if sys.platform == "darwin" else 2**10
    peak_rss, anon = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale, float("nan")
else:
    peak_rss, anon = final["VmHWM"], sampler.anon
print(json.dumps({"seconds": seconds, "traced_peak_mb": traced_peak / 2**20, "peak_rss_mb": peak_rss,
                  "peak_anon_mb": anon, "peak_file_mb": sampler.file}))
"""

PREPARE = r"""
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import bench_probe
bench_probe.build_model(Path(sys.argv[2]))
for samples, path in zip(sys.argv[3::2], sys.argv[4::2]):
    bench_probe.write_samples(Path(path), int(samples))
"""


REAL_CHILD = r"""
import json, os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
sys.path.insert(0, sys.argv[4])
from bninspect.keras_runtime import import_keras
import_keras(quiet=True)  # as bninspect does (on TensorFlow: oneDNN on), for both sides; not timed
import numpy as np
import keras


def peak_mb():
    with open("/proc/self/status") as handle:
        fields = dict(line.split(":", 1) for line in handle if ":" in line)
    return int(fields["VmHWM"].split()[0]) / 1024


mode, model_path, data_path = sys.argv[1:4]
started = time.perf_counter()
cpu_started = sum(os.times()[:2])
if mode == "predict":
    model = keras.saving.load_model(model_path, compile=False)
    model.predict(np.load(data_path, mmap_mode="r"), batch_size=32, verbose=0)
elif mode == "probe":
    from bninspect.probes import run_probe
    run_probe(model_path, data_path, batch_size=32, progress=False, thresholds={})
else:
    from bninspect.probes.recalibrate import recompute
    recompute(model_path, data_path, batch_size=32, progress=False)
print(json.dumps({"seconds": time.perf_counter() - started, "cpu_seconds": sum(os.times()[:2]) - cpu_started,
                  "peak_rss_mb": peak_mb()}))
"""

REAL_PREPARE = r"""
import os, sys
from pathlib import Path
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
sys.path.insert(0, sys.argv[1])
import bench_probe
bench_probe.build_application(sys.argv[2], Path(sys.argv[3]))
"""


def build_application(name: str, path: Path) -> None:
    if path.exists():
        return
    import keras

    keras.utils.set_random_seed(0)
    getattr(keras.applications, name)(weights=None, input_shape=(224, 224, 3)).save(path)


def write_images(path: Path, samples: int) -> None:
    """Random pixels 0-255, float32 (n, 224, 224, 3), written in slices: the parent stays small."""
    write_uniform(path, samples, (224, 224, 3), high=255.0, chunk=64)


def write_uniform(path: Path, samples: int, shape: tuple[int, ...], high: float, chunk: int) -> None:
    """Uniform [0, high) float32 samples of `shape` in a .npy file, written `chunk` samples at a time
    through a memory map (kept when the file exists already: the seed is the sample count)."""
    if path.exists():
        return
    import numpy as np

    rng = np.random.default_rng(samples)
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(samples, *shape))
    for start in range(0, samples, chunk):
        stop = min(start + chunk, samples)
        data[start:stop] = rng.uniform(0, high, (stop - start, *shape))
    data.flush()


def child_env() -> dict[str, str]:
    """The environment of every child: KERAS_BACKEND from --backend (`main` sets it here)."""
    return dict(os.environ)


def measure_real(mode: str, model: Path, data: Path) -> dict:
    completed = subprocess.run([sys.executable, "-c", REAL_CHILD, mode, str(model), str(data), str(ROOT)],
                               capture_output=True, text=True, env=child_env())
    if completed.returncode != 0:
        sys.exit(f"{mode} {model.name} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main_real(options: argparse.Namespace) -> None:
    here = str(Path(__file__).resolve().parent)
    cases = [(name, options.real_samples) for name in options.models]
    cases += [(name, options.large_samples) for name in options.large_models]
    for samples in sorted({samples for _, samples in cases}):
        # In a child: this process stays small (see the module docstring on inherited peaks).
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {here!r}); import bench_probe; "
                        f"from pathlib import Path; bench_probe.write_images(Path({str(options.work)!r}) / "
                        f"'images_{samples}.npy', {samples})"], check=True)
    print(f"{'model':>15} {'samples':>7} {'command':>11} {'seconds':>8} {'cpu s':>7} {'peak MB':>8} "
          f"{'time x':>7} {'mem x':>6}", flush=True)
    verdicts = []
    for name, samples in cases:
        model = options.work / f"{name}.keras"
        subprocess.run([sys.executable, "-c", REAL_PREPARE, here, name, str(model)], check=True)
        data = options.work / f"images_{samples}.npy"
        results = {}
        for mode in ("predict", "probe", "recalibrate"):
            runs = [measure_real(mode, model, data) for _ in range(options.repeat)]
            results[mode] = min(runs, key=lambda run: run["seconds"])
            result, base = results[mode], results["predict"]
            time_ratio, memory_ratio = result["seconds"] / base["seconds"], result["peak_rss_mb"] / base["peak_rss_mb"]
            print(f"{name:>15} {samples:>7} {mode:>11} {result['seconds']:>8.1f} {result['cpu_seconds']:>7.1f} "
                  f"{result['peak_rss_mb']:>8.0f} {time_ratio:>7.2f} {memory_ratio:>6.2f}", flush=True)
            if mode != "predict":
                time_target = 1.3 if samples <= options.real_samples else 1.2
                memory_target = 1.5 if samples <= options.real_samples else None
                ok = time_ratio <= time_target and (memory_target is None or memory_ratio <= memory_target)
                verdicts.append(f"{name} {samples} {mode}: time {time_ratio:.2f}x (<= {time_target}x)"
                                + (f", memory {memory_ratio:.2f}x (<= {memory_target}x)" if memory_target else "")
                                + f" -> {'ok' if ok else 'MISSED'}")
    print("\n".join(verdicts))


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
    write_uniform(path, samples, (32, 32, 3), high=1.0, chunk=4096)


def measure(mode: str, model: Path, data: Path) -> dict:
    completed = subprocess.run([sys.executable, "-c", CHILD, mode, str(model), str(data), str(ROOT)],
                               capture_output=True, text=True, env=child_env())
    if completed.returncode != 0:
        sys.exit(f"{mode} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000, help="N (the second size is 10N)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement; the fastest counts")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work")
    parser.add_argument("--real", action="store_true", help="keras.applications models at 224x224 instead")
    parser.add_argument("--models", type=lambda text: text.split(","),
                        default=["DenseNet121", "ResNet50", "EfficientNetB0"], help="with --real, comma-separated")
    parser.add_argument("--large-models", type=lambda text: [name for name in text.split(",") if name],
                        default=["DenseNet121", "ResNet50", "EfficientNetB0"],
                        help="with --real: models also run on --large-samples (comma-separated, may be empty)")
    parser.add_argument("--real-samples", type=int, default=144)
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"), default=None,
                        help="the Keras backend of every child (default: as Keras chooses)")
    parser.add_argument("--large-samples", type=int, default=1000)
    options = parser.parse_args()
    options.work.mkdir(parents=True, exist_ok=True)
    if options.backend is not None:
        os.environ["KERAS_BACKEND"] = options.backend
    print(f"backend: {os.environ.get('KERAS_BACKEND', 'as Keras chooses')}", flush=True)
    if options.real:
        main_real(options)
        return
    model = options.work / "probe_cnn.keras"
    sizes = (options.samples, options.samples * 10)
    files = {samples: options.work / f"probe_samples_{samples}.npy" for samples in sizes}
    # In a child: building the model imports TF and writing the files maps them, which would raise
    # this process's peak RSS (and with it the ru_maxrss the measuring children inherit).
    prepared = subprocess.run([sys.executable, "-c", PREPARE, str(Path(__file__).resolve().parent), str(model),
                               *(str(part) for samples in sizes for part in (samples, files[samples]))],
                              capture_output=True, text=True)
    if prepared.returncode != 0:
        sys.exit(f"making the model and the data failed:\n{prepared.stderr}")
    results = {}
    for samples in sizes:
        for mode in ("predict", "probe"):
            runs = [measure(mode, model, files[samples]) for _ in range(options.repeat)]
            results[mode, samples] = min(runs, key=lambda run: run["seconds"])

    print(f"{'samples':>8} {'predict s':>10} {'probe s':>9} {'ratio':>6}   "
          f"{'predict MB traced/rss (anon)':>29}   {'probe MB traced/rss (anon)':>27}")
    for samples in sizes:
        predict, probe = results["predict", samples], results["probe", samples]
        print(f"{samples:>8} {predict['seconds']:>10.2f} {probe['seconds']:>9.2f} "
              f"{probe['seconds'] / predict['seconds']:>6.2f}   "
              f"{predict['traced_peak_mb']:>11.1f} / {predict['peak_rss_mb']:>5.0f} ({predict['peak_anon_mb']:>5.0f})   "
              f"{probe['traced_peak_mb']:>9.1f} / {probe['peak_rss_mb']:>5.0f} ({probe['peak_anon_mb']:>5.0f})")
    small, large = results["probe", sizes[0]], results["probe", sizes[1]]
    worst_ratio = max(results["probe", n]["seconds"] / results["predict", n]["seconds"] for n in sizes)
    print(f"time: probe / predict at most {worst_ratio:.2f}x (target <= 1.5x) -> "
          f"{'ok' if worst_ratio <= 1.5 else 'MISSED'}")
    data_growth = (sizes[1] - sizes[0]) * 32 * 32 * 3 * 4 / 2**20
    growth = {key: large[key] - small[key] for key in ("traced_peak_mb", "peak_rss_mb", "peak_anon_mb")}
    # The verdict counts the whole RSS, memory-mapped data pages included, not only the anonymous part.
    flat = growth["traced_peak_mb"] < 0.1 * data_growth and growth["peak_rss_mb"] < 0.1 * data_growth
    print(f"memory: probe peak grows by {growth['traced_peak_mb']:+.1f} MB traced, {growth['peak_rss_mb']:+.0f} MB RSS "
          f"({growth['peak_anon_mb']:+.0f} MB anonymous) from {sizes[0]} to {sizes[1]} samples "
          f"(the data grows by {data_growth:.0f} MB) -> {'flat' if flat else 'NOT flat'}")

if __name__ == "__main__":
    main()
