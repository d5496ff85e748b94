"""`bninspect report` on a model with 200 BN layers, measured side by side with `bninspect check`.

Prints, for a legacy .h5 file written by Keras 3 (200 Dense(64)+BN blocks, untrained, so every BN
layer has a finding): the wall time of `bninspect report FILE -o OUT.html` and of
`bninspect check FILE`, each in a fresh process (imports included), their ratio, the size of the
HTML page, and the time and size of `--format png`.

Usage: python benchmarks/bench_report.py [--work DIR] [--repeat N]
The file is written to benchmarks/_work/ (git-ignored) and reused when present.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_static import BN_BLOCKS, ROOT, build_model_file, timed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work: Path = args.work
    model = work / "bn200_report.h5"
    print("writing the benchmark file with Keras (once) ...", flush=True)
    build_model_file(model, ballast_units=0)
    page, png = work / "bn200_report.html", work / "bn200_overview.png"

    check = timed([sys.executable, "-m", "bninspect", "check", str(model)], args.repeat, ok_codes=(0, 1))
    report = timed([sys.executable, "-m", "bninspect", "report", str(model), "-o", str(page)], args.repeat)
    overview = timed([sys.executable, "-m", "bninspect", "report", str(model), "--format", "png", "-o", str(png)],
                     args.repeat)
    size = page.stat().st_size
    print()
    print(f"{BN_BLOCKS} BN layers: `bninspect report` {report:5.2f} s | `bninspect check` {check:5.2f} s "
          f"| ratio {report / check:4.1f}x")
    print(f"   HTML page {size / 1e6:5.2f} MB ({size / BN_BLOCKS / 1e3:4.1f} kB per BN layer)")
    print(f"   `bninspect report --format png` {overview:5.2f} s, {png.stat().st_size / 1e3:5.1f} kB")


if __name__ == "__main__":
    main()
