"""`bninspect report` measured side by side with `bninspect check` on the same files, in one run.

Prints:
  1. the 200-BN and the 2,000-BN benchmark models of bench_static.py (legacy .h5 written by Keras 3,
     Dense(64)+BN blocks, untrained, so every BN layer has a finding): the wall time of
     `bninspect report FILE -o OUT.html` and of `bninspect check FILE`, each in a fresh process
     (imports included), their ratio (targets: 4x for 200 BN, 6x for 2,000), the same for their CPU
     time (user + system, less stretched by other work on a shared machine), and the page size
     (target for 200 BN: at most 1 MB);
  2. `bninspect report --format png` (the overview figure) on the 200-BN model;
  3. the `--data` report on the sample CNN (sample_models/cnn_trained.keras on
     sample_models/cnn_data.npy) next to `bninspect probe` on the same data, which runs the same
     dynamic analysis without drawing anything.

Usage: python benchmarks/bench_report.py [--work DIR] [--repeat N] [--repeat-many N]
The files are written to benchmarks/_work/ (git-ignored) and reused when present.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_static import ROOT, build_model_file  # noqa: E402

TARGETS = {200: 4.0, 2000: 6.0}
PAGE_LIMIT = 1_000_000  # bytes, for the 200-BN page
SAMPLE_MODEL = ROOT / "sample_models" / "cnn_trained.keras"
SAMPLE_DATA = ROOT / "sample_models" / "cnn_data.npy"


def timed(command: list[str], repeat: int, ok_codes: tuple[int, ...] = (0,)) -> tuple[float, float]:
    """Median wall time and median CPU time (user + system) of a fresh process running `command`.
    The CPU time is printed too because the machine is shared: other work stretches the wall time
    of whichever command it overlaps, far less its CPU time."""
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if result.returncode not in ok_codes:
            raise SystemExit(f"{' '.join(command)} exited {result.returncode}: {result.stderr.decode()[-500:]}")
    return statistics.median(walls), statistics.median(cpus)


def report_vs_check(model: Path, page: Path, bn_layers: int, repeat: int) -> str:
    check, check_cpu = timed([sys.executable, "-m", "bninspect", "check", str(model)], repeat, ok_codes=(0, 1))
    report, report_cpu = timed([sys.executable, "-m", "bninspect", "report", str(model), "-o", str(page)], repeat)
    size = page.stat().st_size
    ratio = report / check
    verdict = "ok" if ratio <= TARGETS[bn_layers] else "OVER"
    line = (f"{bn_layers:,} BN layers: `bninspect report` {report:6.2f} s | `bninspect check` {check:5.2f} s "
            f"| ratio {ratio:4.1f}x (target <= {TARGETS[bn_layers]:g}x: {verdict})\n"
            f"   CPU time: report {report_cpu:6.2f} s | check {check_cpu:5.2f} s | ratio {report_cpu / check_cpu:4.1f}x\n"
            f"   HTML page {size / 1e6:5.2f} MB ({size / bn_layers / 1e3:4.1f} kB per BN layer)")
    if bn_layers == 200:
        line += f" (target <= {PAGE_LIMIT / 1e6:g} MB: {'ok' if size <= PAGE_LIMIT else 'OVER'})"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--repeat-many", type=int, default=None,
                        help="repeats for the 2,000-BN model (default: --repeat)")
    args = parser.parse_args()
    work: Path = args.work
    few, many = work / "bn200_report.h5", work / "bn2000.h5"
    print("writing the benchmark files with Keras (once) ...", flush=True)
    build_model_file(few, ballast_units=0)
    build_model_file(many, ballast_units=0, chains=10)

    lines = [report_vs_check(few, work / "bn200_report.html", 200, args.repeat),
             report_vs_check(many, work / "bn2000_report.html", 2000, args.repeat_many or args.repeat)]

    png = work / "bn200_overview.png"
    overview, _ = timed([sys.executable, "-m", "bninspect", "report", str(few), "--format", "png", "-o", str(png)],
                        args.repeat)
    lines.append(f"200 BN layers: `bninspect report --format png` {overview:5.2f} s, {png.stat().st_size / 1e3:5.1f} kB")

    data_page = work / "cnn_data_report.html"
    data_args = [str(SAMPLE_MODEL), "--data", str(SAMPLE_DATA)]
    probe, _ = timed([sys.executable, "-m", "bninspect", "probe", *data_args], args.repeat)
    data_report, _ = timed([sys.executable, "-m", "bninspect", "report", *data_args, "-o", str(data_page)],
                           args.repeat)
    lines.append(f"sample CNN with --data: `bninspect report` {data_report:5.2f} s | `bninspect probe` {probe:5.2f} s "
                 f"| ratio {data_report / probe:4.2f}x | page {data_page.stat().st_size / 1e3:5.1f} kB")
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
