"""Plain-number summaries of BN arrays, shared by the table and JSON reporters."""

from __future__ import annotations

import numpy as np

HISTOGRAM_BARS = "▁▂▃▄▅▆▇█"


def array_stats(values: np.ndarray | None) -> dict:
    """min/max/mean/std over the finite values, plus how many are not finite. {} for None."""
    if values is None:
        return {}
    finite = values[np.isfinite(values)]
    stats = {"min": None, "max": None, "mean": None, "std": None}
    if finite.size:
        stats = {"min": float(finite.min()), "max": float(finite.max()),
                 "mean": float(finite.mean()), "std": float(finite.std())}
    non_finite = int(values.size - finite.size)
    if non_finite:
        stats["non_finite"] = non_finite
    return stats


def histogram(values: np.ndarray, bins: int = 8) -> str:
    """A one-line unicode histogram of the values on a log10 scale (variances span decades)."""
    finite = values[np.isfinite(values) & (values > 0)]
    if finite.size == 0:
        return ""
    logs = np.log10(finite)
    low, high = float(logs.min()), float(logs.max())
    if high - low < 1e-12:
        counts = np.zeros(bins, dtype=int)
        counts[bins // 2] = finite.size
    else:
        counts, _ = np.histogram(logs, bins=bins, range=(low, high))
    peak = counts.max()
    return "".join(" " if count == 0 else HISTOGRAM_BARS[min(len(HISTOGRAM_BARS) - 1,
                                                              int(count / peak * (len(HISTOGRAM_BARS) - 1)))]
                   for count in counts)


def fmt_number(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e4 or magnitude < 1e-3:
        return f"{value:.2e}"
    return f"{value:.4g}"


def fmt_range(values: np.ndarray | None) -> str:
    if values is None:
        return "-"
    stats = array_stats(values)
    text = ("-" if stats["min"] is None else
            fmt_number(stats["min"]) if stats["min"] == stats["max"] else
            f"{fmt_number(stats['min'])} … {fmt_number(stats['max'])}")
    if stats.get("non_finite"):
        text += f" ({stats['non_finite']} NaN/Inf)"
    return text
