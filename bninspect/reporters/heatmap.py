"""The channels x layers heatmaps of `bninspect report`: every channel of every BN layer in one figure.

One matplotlib figure per model, whatever its depth: a strip with the worst finding of each layer,
then one panel per statistic (gamma, beta, moving mean, moving variance, effective scale), each an
image with one row per BN layer (graph order, top to bottom) and one column per channel, with its
colour bar. Channels named by a finding are ringed in red. The images are embedded in the SVG as PNG
data (`interpolation="none"`: one pixel per cell, scaled by the browser), so the page grows by a few
bytes per channel instead of by a figure per layer: drawing the figure for 2,000 layers costs about
what it costs for 20.

Layers wider than HEATMAP_COLUMNS channels are shown binned: each cell is the channel of its bin
that lies farthest from the layer's median, so an outlier (a collapsed variance, a zero gamma)
stays visible. Cells past a layer's last channel, and values a log panel cannot show (NaN, Inf, 0,
negative), are left blank; BN003/BN004 name those channels, and they are ringed.

Layer: reporters (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from bninspect.reporters.plots import FLAGGED, _Figures, _svg, effective_scale
from bninspect.untrusted import plot_text

if TYPE_CHECKING:
    from bninspect.model import BNLayer

# At most this many columns per panel; wider layers are binned (see the module docstring).
HEATMAP_COLUMNS = 256
# Red rings drawn per panel at most; the flagged channels are listed in the layer table anyway.
MAX_RINGS = 400
# Layer names label the rows when there are at most this many; else the rows are numbered (#k).
NAMED_ROWS = 32
# Colours of the findings strip, by the worst severity of the layer's findings.
SEVERITY_COLOURS = {"error": "#d62728", "warning": "#ff9f1c", "info": "#4f8fd6"}
BLANK = "#f2f2f2"

_PANELS: tuple[tuple[str, bool, Callable[["BNLayer"], np.ndarray | None]], ...] = (
    ("gamma", False, lambda layer: layer.gamma if layer.gamma is not None else np.ones(layer.channels)),
    ("beta", False, lambda layer: layer.beta),
    ("moving mean", False, lambda layer: layer.moving_mean),
    ("moving variance (log)", True, lambda layer: layer.moving_variance),
    ("effective scale (log)", True, effective_scale),
)


@dataclass(frozen=True)
class Grid:
    """One statistic of every layer as a rows x columns array (NaN where blank), and the column of
    each layer's channel c: c // width[row]."""

    values: np.ndarray
    width: np.ndarray


def bin_width(channels: int, columns: int = HEATMAP_COLUMNS) -> int:
    return max(1, math.ceil(channels / columns))


def grid(arrays: Sequence[np.ndarray | None], log: bool, columns: int = HEATMAP_COLUMNS) -> Grid:
    """The rows of one panel. Layers with the same channel count are computed together (a model has
    few distinct widths, however deep it is)."""
    widths = np.array([bin_width(0 if a is None else np.size(a), columns) for a in arrays], dtype=np.int64)
    used = max([math.ceil(np.size(a) / w) for a, w in zip(arrays, widths) if a is not None] or [1])
    out = np.full((len(arrays), max(used, 1)), np.nan)
    by_size: dict[int, list[int]] = {}
    for row, values in enumerate(arrays):
        if values is not None and np.size(values):
            by_size.setdefault(np.size(values), []).append(row)
    for size, rows in by_size.items():
        stack = np.array([np.ravel(arrays[row]) for row in rows], dtype=np.float64)
        with np.errstate(all="ignore"):
            if log:
                stack = np.log10(np.where(stack > 0, stack, np.nan))
            stack[~np.isfinite(stack)] = np.nan
        width = bin_width(size, columns)
        if width > 1:
            stack = _farthest_in_bins(stack, width)
        out[rows, :stack.shape[1]] = stack
    return Grid(out, widths)


def _farthest_in_bins(stack: np.ndarray, width: int) -> np.ndarray:
    """Per row and bin of `width` consecutive channels, the value farthest from the row's median."""
    rows, size = stack.shape
    bins = math.ceil(size / width)
    padded = np.full((rows, bins * width), np.nan)
    padded[:, :size] = stack
    padded = padded.reshape(rows, bins, width)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows and bins
            median = np.nanmedian(stack, axis=1)
        distance = np.abs(padded - median[:, None, None])
    distance[np.isnan(distance)] = -1.0
    pick = distance.argmax(axis=2)
    return np.take_along_axis(padded, pick[:, :, None], axis=2)[:, :, 0]


def _limits(values: np.ndarray) -> tuple[float, float]:
    """The colour range: the 0.5 and 99.5 percentiles of the finite cells (a single outlier must not
    wash out every other cell; the colour bar's arrows say values lie beyond)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(finite, (0.5, 99.5)))
    if high <= low:
        pad = max(abs(low) * 0.1, 0.1)
        low, high = low - pad, high + pad
    return low, high


def heatmap_svg(layers: Sequence["BNLayer"], severities: Mapping[str, str], flagged: Mapping[str, set[int]],
                prefix: str = "hm-") -> str:
    """The figure as inline SVG. `severities`: layer path -> the worst severity of its findings
    ("error", "warning", "info"); `flagged`: layer path -> the channels its findings name."""
    figures = _Figures()
    count = len(layers)
    with figures.context():
        figure = figures.Figure(figsize=(10.0, min(max(2.2, 1.0 + 0.03 * count), 14.0)))
        grid_spec = figure.add_gridspec(1, 1 + len(_PANELS), width_ratios=[0.12] + [1.0] * len(_PANELS),
                                        left=0.16 if 0 < count <= NAMED_ROWS else 0.05, right=0.99,
                                        top=1 - 0.32 / figure.get_figheight(),
                                        bottom=0.62 / figure.get_figheight(), wspace=0.12)
        strip = figure.add_subplot(grid_spec[0, 0])
        _findings_strip(figures, strip, layers, severities)
        rings = _rings(layers, flagged)
        for index, (title, log, values_of) in enumerate(_PANELS):
            # Not sharey=strip: a shared axis would build and lay out the strip's ticks on every panel.
            ax = figure.add_subplot(grid_spec[0, index + 1])
            _panel(figures, figure, ax, title, log, grid([values_of(layer) for layer in layers], log), rings)
        return _svg(figure, prefix)


def _findings_strip(figures: _Figures, ax, layers: Sequence["BNLayer"], severities: Mapping[str, str]) -> None:
    colors = figures.matplotlib.colors
    palette = [colors.to_rgb(BLANK)] + [colors.to_rgb(SEVERITY_COLOURS[name]) for name in ("info", "warning", "error")]
    rank = {"info": 1, "warning": 2, "error": 3}
    cells = np.array([[palette[rank.get(severities.get(layer.path, ""), 0)]] for layer in layers]).reshape(-1, 1, 3)
    ax.imshow(cells if len(layers) else np.ones((1, 1, 3)), aspect="auto", interpolation="none")
    ax.set_xticks([])
    ax.set_xlabel("findings", fontsize=5.5)
    count = len(layers)
    if 0 < count <= NAMED_ROWS:
        ax.set_yticks(np.arange(count))
        ax.set_yticklabels([plot_text(_short(layer.path)) for layer in layers], fontsize=5.5)
    else:
        ax.yaxis.set_major_locator(figures.matplotlib.ticker.MaxNLocator(8, integer=True))
        ax.yaxis.set_major_formatter(figures.matplotlib.ticker.FuncFormatter(lambda value, _: f"#{value:.0f}"))
        ax.set_ylabel("BN layer (graph order)")


def _slug(title: str) -> str:
    return title.split(" (")[0].replace(" ", "-")


def _short(path: str, limit: int = 28) -> str:
    return path if len(path) <= limit else "…" + path[-(limit - 1):]


def _rings(layers: Sequence["BNLayer"], flagged: Mapping[str, set[int]]) -> list[tuple[int, int]]:
    """(row, channel) of every channel a finding names."""
    return [(row, channel) for row, layer in enumerate(layers)
            for channel in sorted(flagged.get(layer.path, ())) if 0 <= channel < layer.channels]


def _panel(figures: _Figures, figure, ax, title: str, log: bool, cells: Grid, rings: list[tuple[int, int]]) -> None:
    matplotlib = figures.matplotlib
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad=BLANK)
    low, high = _limits(cells.values)
    image = ax.imshow(np.ma.masked_invalid(cells.values), aspect="auto", interpolation="none", cmap=cmap,
                      vmin=low, vmax=high)
    ax.set_title(title, loc="left", fontsize=6.5)
    ax.set_yticks([])
    columns = cells.values.shape[1]
    ax.set_xticks([0, columns - 1] if columns > 1 else [0])
    binned = int(cells.width.max()) if cells.width.size else 1
    ax.set_xticklabels(["0", f"{columns - 1}"] if columns > 1 else ["0"])
    if binned > 1:
        ax.set_xlabel(f"column (channels binned by up to {binned})", fontsize=5.5, labelpad=1)
    if rings:
        shown = rings[:MAX_RINGS]
        ax.scatter([channel // cells.width[row] for row, channel in shown], [row for row, _ in shown], s=9,
                   facecolors="none", edgecolors=FLAGGED, linewidths=0.7, gid=f"bn-rings-{_slug(title)}")
        ax.set_xlim(-0.5, columns - 0.5)
        ax.set_ylim(cells.values.shape[0] - 0.5, -0.5)
    extend = _extend(cells.values, low, high)
    # The colour bar in its own axes under the panel (not taken from the panel: the panels and the
    # strip keep one height, so their rows line up).
    box, height = ax.get_position(), figure.get_figheight()
    bar_axes = figure.add_axes((box.x0, box.y0 - 0.34 / height, box.width, 0.06 / height))
    bar = figure.colorbar(image, cax=bar_axes, orientation="horizontal", extend=extend)
    bar.outline.set_linewidth(0.4)
    bar.ax.tick_params(labelsize=5.5, length=1.5, width=0.4)
    bar.ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(3))
    if log:
        bar.ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{10 ** value:.2g}"))
    else:
        bar.ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:.3g}"))


def _extend(values: np.ndarray, low: float, high: float) -> str:
    finite = values[np.isfinite(values)]
    below, above = bool(finite.size and finite.min() < low), bool(finite.size and finite.max() > high)
    return "both" if below and above else "min" if below else "max" if above else "neither"
