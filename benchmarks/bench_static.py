"""Static inspection speed, measured side by side with Keras in one run.

Prints, for legacy .h5 files written by Keras 3:
  1. a ~1 GB file with 200 BN layers: `bninspect FILE --format json` (a fresh process, imports
     included) against a fresh process that runs `keras.models.load_model` and reads the BN
     weights; the ratio (target: at least 10x), and whether bninspect imported tensorflow/keras;
  2. the same 200 BN layers in a ~10 MB file: the time ratio 1 GB / 10 MB (target: within 1.3x);
  3. a file with 2,000 BN layers, end to end through the CLI in a fresh process each: the JSON
     report, the text table (`bninspect FILE`) and `bninspect check FILE` (target: under 2 s each),
     for the legacy .h5 and for the same model saved as .keras;
  4. `bninspect check --baseline` on the 2,000-BN .h5 against `check` with the same output
     (JSON), the baseline holding every finding of the file (target: at most 5% more);
  5. `bninspect --version` and `--help` start-up (target: under 0.5 s).

Usage: python benchmarks/bench_static.py [--work DIR] [--repeat N] [--keep]
The files are written to benchmarks/_work/ (git-ignored) and reused when present.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BN_BLOCKS = 200
CHANNELS = 64

KERAS_READ = """
import os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras
model = keras.models.load_model(sys.argv[1], compile=False)
stats = [[w.numpy() for w in layer.weights] for layer in model.layers
         if isinstance(layer, keras.layers.BatchNormalization)]
assert len(stats) == int(sys.argv[2]), len(stats)
"""

IMPORT_CHECK = """
import sys
from bninspect.cli import main
try:
    main([sys.argv[1], "--format", "json", "--output", sys.argv[2]])
except SystemExit:
    pass
heavy = sorted(name for name in ("tensorflow", "keras", "tf_keras") if name in sys.modules)
print(",".join(heavy) or "none")
"""


def build_model_file(path: Path, ballast_units: int, chains: int = 1) -> None:
    """Chains of 200 Dense(64)+BN blocks, plus one Dense side branch that carries the file's bulk.

    Several short chains rather than one long one: Keras builds its graph recursively and a chain
    of thousands of layers overflows Python's recursion limit.
    """
    if path.exists():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    features = keras.Input((CHANNELS,), name="features")
    inputs, outputs = [features], []
    for chain in range(chains):
        x = features
        for index in range(BN_BLOCKS):
            x = keras.layers.Dense(CHANNELS, name=f"dense_{chain}_{index}")(x)
            x = keras.layers.BatchNormalization(name=f"bn_{chain}_{index}")(x)
        outputs.append(x)
    if ballast_units:
        side = keras.Input((ballast_units,), name="side")
        outputs.append(keras.layers.Dense(ballast_units, name="ballast")(side))
        inputs.append(side)
    model = keras.Model(inputs, outputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)


def timed(command: list[str], repeat: int, ok_codes: tuple[int, ...] = (0,)) -> float:
    """Median wall time of a fresh process running `command` (output to /dev/null, as in a pipe)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
        times.append(time.perf_counter() - start)
        if result.returncode not in ok_codes:
            raise SystemExit(f"{' '.join(command)} exited {result.returncode}: {result.stderr.decode()[-500:]}")
    return statistics.median(times)


def bninspect_command(path: Path, work: Path) -> list[str]:
    return [sys.executable, "-m", "bninspect", str(path), "--format", "json", "--output", str(work / "out.json")]


def end_to_end(path: Path, work: Path, repeat: int) -> dict[str, float]:
    """The three ways a user runs bninspect on one file, each a fresh process, imports included.
    `check` exits 1 when it finds problems (the benchmark models are untrained): that is a result."""
    return {
        "json": timed(bninspect_command(path, work), repeat),
        "table": timed([sys.executable, "-m", "bninspect", str(path)], repeat),
        "check": timed([sys.executable, "-m", "bninspect", "check", str(path)], repeat, ok_codes=(0, 1)),
    }


def end_to_end_line(label: str, times: dict[str, float]) -> str:
    verdict = "ok" if max(times.values()) < 2 else "OVER"
    return (f"2,000 BN layers, {label}: `bninspect FILE --format json` {times['json']:5.2f} s | "
            f"`bninspect FILE` {times['table']:5.2f} s | `bninspect check FILE` {times['check']:5.2f} s "
            f"(target < 2 s each: {verdict})")


def baseline_cost(path: Path, work: Path, repeat: int) -> tuple[float, float]:
    """(`check`, `check --baseline`) on `path`, alternating so that a busy machine slows both alike;
    the fastest of each (the least disturbed run). The baseline is written once, with every finding."""
    baseline = work / f"{path.stem}.baseline.json"
    subprocess.run([sys.executable, "-m", "bninspect", "check", "--update-baseline", str(baseline), str(path)],
                   stdout=subprocess.DEVNULL, cwd=ROOT, check=True)
    plain = [sys.executable, "-m", "bninspect", "check", str(path), "--format", "json", "--output", str(work / "out.json")]
    with_baseline = [*plain, "--baseline", str(baseline)]
    pairs = [(timed(plain, 1, ok_codes=(0, 1)), timed(with_baseline, 1)) for _ in range(max(3, repeat))]
    return min(pair[0] for pair in pairs), min(pair[1] for pair in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work: Path = args.work

    big = work / "bn200_1gb.h5"
    small = work / "bn200_10mb.h5"
    many = work / "bn2000.h5"
    many_keras = work / "bn2000.keras"
    print("writing benchmark files with Keras (once) ...", flush=True)
    build_model_file(big, ballast_units=16000)  # 16000^2 float32 = 1.02 GB
    build_model_file(small, ballast_units=1500)  # 1500^2 float32 = 9 MB
    build_model_file(many, ballast_units=0, chains=10)
    build_model_file(many_keras, ballast_units=0, chains=10)
    for path in (big, small, many, many_keras):
        print(f"  {path.name}: {path.stat().st_size / 1e6:,.0f} MB")

    ours_big = timed(bninspect_command(big, work), args.repeat)
    theirs_big = timed([sys.executable, "-c", KERAS_READ, str(big), str(BN_BLOCKS)], max(1, args.repeat // 2))
    heavy = subprocess.run([sys.executable, "-c", IMPORT_CHECK, str(big), str(work / "out.json")],
                           capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip()
    ours_small = timed(bninspect_command(small, work), args.repeat)
    ours_many = end_to_end(many, work, args.repeat)
    ours_many_keras = end_to_end(many_keras, work, args.repeat)
    plain_check, baseline_check = baseline_cost(many, work, args.repeat)
    version = timed([sys.executable, "-m", "bninspect", "--version"], args.repeat)
    help_time = timed([sys.executable, "-m", "bninspect", "--help"], args.repeat)

    print()
    print(f"1 GB, {BN_BLOCKS} BN: bninspect {ours_big:6.2f} s | keras load_model + BN weights {theirs_big:6.2f} s "
          f"| speed-up {theirs_big / ours_big:5.1f}x (target >= 10x)")
    print(f"   heavy modules imported by bninspect: {heavy} (target: none)")
    print(f"10 MB vs 1 GB, same {BN_BLOCKS} BN: {ours_small:6.2f} s vs {ours_big:6.2f} s "
          f"| ratio {ours_big / ours_small:4.2f}x (target <= 1.3x)")
    print(end_to_end_line("legacy .h5", ours_many))
    print(end_to_end_line(".keras", ours_many_keras))
    print(f"2,000 BN layers: `check` {plain_check:5.2f} s | `check --baseline` {baseline_check:5.2f} s "
          f"| {(baseline_check / plain_check - 1) * 100:+.1f}% (target <= +5%)")
    print(f"bninspect --version {version:5.2f} s, --help {help_time:5.2f} s (target < 0.5 s)")


if __name__ == "__main__":
    main()
