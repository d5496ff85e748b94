"""What `bninspect.BNMonitor` adds to `fit`: the same model, data and seed with and without it.

For each model, one compiled model is trained a first time (tracing, excluded), then `fit` is
timed alternately without a callback, with `BNMonitor()` (checks at epoch ends, the default) and
with `BNMonitor(every_n_steps=N)`, `--repeat` times each; the median of each is printed with the
overhead relative to `fit` alone. TensorFlow start-up and model building are excluded.

Models: "tiny" (Conv+BN, a few hundred parameters, 16x16x3: the monitor's fixed cost is largest
relative to a step), "mobilenetv2" (keras.applications.MobileNetV2, weights=None, 52 BN layers,
96x96x3 by default) and "resnet50" (ResNet50, weights=None, 53 BN layers; not run by default).
Random data; the loss is irrelevant. Backend: --backend tensorflow|jax|torch (KERAS_BACKEND), else
whatever Keras is configured with.

Usage: python benchmarks/bench_monitor.py [--backend B] [--models tiny,mobilenetv2] [--size 96] [--steps 8]
                                          [--epochs 2] [--batch 8] [--every 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build(name: str, size: int):
    import keras

    keras.utils.set_random_seed(0)
    if name == "tiny":
        inputs = keras.Input((16, 16, 3))
        x = keras.layers.BatchNormalization()(keras.layers.Conv2D(8, 3, padding="same")(inputs))
        outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
        return keras.Model(inputs, outputs), 16
    if name == "mobilenetv2":
        return keras.applications.MobileNetV2(input_shape=(size, size, 3), weights=None, classes=10), size
    if name == "resnet50":
        return keras.applications.ResNet50(input_shape=(size, size, 3), weights=None, classes=10), size
    raise SystemExit(f"unknown model {name!r} (tiny, mobilenetv2, resnet50)")


def time_fit(model, x, y, args, callbacks) -> float:
    start = time.perf_counter()
    model.fit(x, y, batch_size=args.batch, epochs=args.epochs, verbose=0, shuffle=False, callbacks=callbacks)
    return time.perf_counter() - start


def bench(name: str, args) -> None:
    import numpy as np

    import bninspect

    model, size = build(name, args.size)
    model.compile("sgd", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.steps * args.batch, size, size, 3)).astype("float32")
    y = rng.integers(0, 10, size=(args.steps * args.batch,))
    configurations = {
        "fit alone": list,
        "BNMonitor() (epoch ends)": lambda: [bninspect.BNMonitor()],
        f"BNMonitor(every_n_steps={args.every})": lambda: [bninspect.BNMonitor(every_n_steps=args.every)],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BN018 on these short runs: not what is measured
        for make in configurations.values():
            time_fit(model, x, y, args, make())  # tracing, and the monitor's class made once
        times = {label: [] for label in configurations}
        for _ in range(args.repeat):
            for label, make in configurations.items():
                times[label].append(time_fit(model, x, y, args, make()))
        begin, check = hook_costs(model, args.repeat)
    alone = statistics.median(times["fit alone"])
    print(f"{name}: {model.count_params():,} parameters, {args.epochs} epochs x {args.steps} steps, batch {args.batch}")
    for label, values in times.items():
        median = statistics.median(values)
        print(f"  {label:34s} {median:8.3f} s  ({(median / alone - 1) * 100:+.1f}%)  runs: "
              + ", ".join(f"{value:.3f}" for value in values))
    # On a shared machine the fit times vary more than the monitor costs; its own hooks, timed
    # alone, give the overhead without that noise.
    per_epoch = (begin + args.epochs * check) / alone * 100
    per_step = (begin + (args.epochs + args.epochs * args.steps // args.every) * check) / alone * 100
    print(f"  monitor hooks timed alone: train begin {begin * 1000:.1f} ms, one check {check * 1000:.1f} ms "
          f"-> {per_epoch:.2f}% of fit at epoch ends, {per_step:.2f}% every {args.every} steps")


def hook_costs(model, repeat: int) -> tuple[float, float]:
    """Median seconds of the monitor's train-begin work and of one check, on the trained model."""
    import bninspect

    monitor = bninspect.BNMonitor()
    monitor.set_model(model)
    begins, checks = [], []
    for _ in range(max(repeat, 5)):
        start = time.perf_counter()
        monitor.on_train_begin()
        begins.append(time.perf_counter() - start)
        start = time.perf_counter()
        monitor.on_epoch_end(0, {})
        checks.append(time.perf_counter() - start)
    return statistics.median(begins), statistics.median(checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,mobilenetv2")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--every", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"), default=None)
    args = parser.parse_args()
    if args.backend is not None:
        os.environ["KERAS_BACKEND"] = args.backend  # before Keras is imported
    import keras

    print(f"backend: {keras.config.backend()}")
    for name in args.models.split(","):
        bench(name.strip(), args)


if __name__ == "__main__":
    main()
