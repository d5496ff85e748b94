"""Plain-number summaries of BN arrays, shared by the table and JSON reporters.

Layer: foundation (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import numpy as np

HISTOGRAM_BARS = "▁▂▃▄▅▆▇█"


def array_stats(values: np.ndarray | None) -> dict | None:
    """min/max/mean/std over the finite values, plus how many are not finite. None for an array
    the layer does not have (gamma with scale=False, beta with center=False): no statistic, not
    an empty one."""
    if values is None:
        return None
    if values.size:
        low, high = values.min(), values.max()
        if np.isfinite(low) and np.isfinite(high):
            # All finite (a NaN or Inf would be the min or max): no masked copy. Called for every
            # array of every BN layer, so this is the path that matters for large models.
            return {"min": float(low), "max": float(high), "mean": float(values.mean()), "std": float(values.std())}
    finite = values[np.isfinite(values)]
    stats = {"min": None, "max": None, "mean": None, "std": None}
    if finite.size:
        stats = {"min": float(finite.min()), "max": float(finite.max()),
                 "mean": float(finite.mean()), "std": float(finite.std())}
    non_finite = int(values.size - finite.size)
    if non_finite:
        stats["non_finite"] = non_finite
    return stats


def array_stats_many(arrays: list[np.ndarray | None]) -> list[dict | None]:
    """`[array_stats(a) for a in arrays]`, computed a row per array on stacks of same-length arrays.

    A model with thousands of BN layers has thousands of small arrays, and numpy's per-call overhead
    (mean and std are several calls each) dominated the JSON report. Reducing along the rows of a
    C-contiguous stack runs the same per-row summation as on each array alone, so the numbers are
    bit-for-bit those of `array_stats`; arrays with a NaN or Inf go through `array_stats` itself.
    """
    results: list[dict | None] = [None] * len(arrays)  # None stays for the absent arrays
    groups: dict[tuple[int, np.dtype], list[int]] = {}
    for index, values in enumerate(arrays):
        if values is None:
            continue
        if values.ndim == 1 and values.size and values.dtype.kind == "f":
            groups.setdefault((values.size, values.dtype), []).append(index)
        else:
            results[index] = array_stats(values)
    for indices in groups.values():
        if len(indices) == 1:
            results[indices[0]] = array_stats(arrays[indices[0]])
            continue
        stack = np.stack([arrays[index] for index in indices])
        low, high = stack.min(axis=1), stack.max(axis=1)
        finite_rows = np.isfinite(low) & np.isfinite(high)
        finite = stack[finite_rows] if not finite_rows.all() else stack
        mean, std = finite.mean(axis=1).tolist(), finite.std(axis=1).tolist()
        lows, highs = low[finite_rows].tolist(), high[finite_rows].tolist()
        row = 0
        for index, is_finite in zip(indices, finite_rows.tolist()):
            if is_finite:
                results[index] = {"min": lows[row], "max": highs[row], "mean": mean[row], "std": std[row]}
                row += 1
            else:
                results[index] = array_stats(arrays[index])
    return results


def _finite_range(values: np.ndarray) -> tuple[float | None, float | None, int]:
    """(min, max) of the finite values (None, None when there are none) and the count of others."""
    if values.size:
        low, high = values.min(), values.max()
        if np.isfinite(low) and np.isfinite(high):
            return float(low), float(high), 0
    finite = values[np.isfinite(values)]
    if not finite.size:
        return None, None, int(values.size)
    return float(finite.min()), float(finite.max()), int(values.size - finite.size)


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
    low, high, non_finite = _finite_range(values)
    text = ("-" if low is None else
            fmt_number(low) if low == high else
            f"{fmt_number(low)} … {fmt_number(high)}")
    if non_finite:
        text += f" ({non_finite} NaN/Inf)"
    return text
