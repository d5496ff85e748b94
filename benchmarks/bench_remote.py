"""Remote reading, measured against local reading of the same files in one run.

Prints:
  1. a ~1 GB legacy .h5 and .keras with 200 BN layers (bench_static's builder) served over HTTP
     on 127.0.0.1 with 5 ms added per request: bytes fetched (target <= 1% of the file), requests,
     and the wall time of `bninspect URL --format json` (a fresh process) against the same command
     on the local file (target <= 5x);
  2. `bninspect check s3://bucket/prefix/ --jobs 4` over 100 small models on moto's S3 server.

Usage: python benchmarks/bench_remote.py [--work DIR] [--ballast UNITS] [--repeat N] [--models N]
`--ballast 16000` (the default) gives the 1 GB files; a smaller value measures a smaller size.
Files go to benchmarks/_work/ (git-ignored) and are reused when present.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from bench_static import build_model_file  # noqa: E402
from remote_servers import RangeHTTPServer, make_bucket, moto_s3, s3_environment, s3_filesystem  # noqa: E402

LATENCY = 0.005


def timed(command: list[str], repeat: int, env: dict | None = None) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, env=env)
        times.append(time.perf_counter() - start)
        if result.returncode not in (0, 1):
            raise SystemExit(f"{' '.join(command)} exited {result.returncode}: {result.stderr.decode()[-500:]}")
    return statistics.median(times)


def inspect_command(location: str) -> list[str]:
    return [sys.executable, "-m", "bninspect", location, "--format", "json"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work")
    parser.add_argument("--ballast", type=int, default=16000, help="units of the Dense side branch (16000: 1 GB)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--models", type=int, default=100, help="models on the S3 prefix")
    args = parser.parse_args()
    work: Path = args.work
    label = f"{args.ballast}"
    served = work / f"remote_{label}"
    served.mkdir(parents=True, exist_ok=True)
    print("writing benchmark files with Keras (once) ...", flush=True)
    files = [served / f"bn200_{label}.h5", served / f"bn200_{label}.keras"]
    for path in files:
        build_model_file(path, ballast_units=args.ballast)

    with RangeHTTPServer(served, latency=LATENCY) as server:
        for path in files:
            size = path.stat().st_size
            local = timed(inspect_command(str(path)), args.repeat)
            url = f"{server.url}/{path.name}"
            server.reset_counts()
            remote = timed(inspect_command(url), args.repeat)
            requests, fetched = server.requests / args.repeat, server.bytes_served / args.repeat
            print(f"{path.suffix:6} {size / 1e6:8,.0f} MB over HTTP (+{LATENCY * 1000:.0f} ms/request): "
                  f"{fetched / 1e6:6.2f} MB fetched = {100 * fetched / size:5.2f}% (target <= 1%: "
                  f"{'ok' if fetched <= 0.01 * size else 'OVER'}) in {requests:4.0f} requests | "
                  f"{remote:5.2f} s vs local {local:5.2f} s = {remote / local:4.2f}x (target <= 5x: "
                  f"{'ok' if remote <= 5 * local else 'OVER'})", flush=True)

    small = work / "bn200_small.keras"
    build_model_file(small, ballast_units=0)
    with moto_s3() as endpoint:
        make_bucket(endpoint, "registry")
        fs = s3_filesystem(endpoint)
        for index in range(args.models):
            fs.put_file(str(small), f"registry/models/team_{index % 10}/model_{index:03d}.keras")
        env = s3_environment(endpoint)
        command = [sys.executable, "-m", "bninspect", "check", "s3://registry/models/", "--format", "json"]
        one = timed(command + ["--jobs", "1"], 1, env)
        four = timed(command + ["--jobs", "4"], 1, env)
        print(f"check s3://registry/models/ ({args.models} .keras of {small.stat().st_size / 1e6:.1f} MB, moto S3): "
              f"--jobs 1 {one:5.2f} s | --jobs 4 {four:5.2f} s ({os.cpu_count()} CPUs)")
    if os.environ.get("BENCH_REMOTE_CLEAN"):
        shutil.rmtree(served)


if __name__ == "__main__":
    main()
