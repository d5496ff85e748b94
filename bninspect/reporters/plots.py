"""The figures of `bninspect report`, drawn with matplotlib: plain data in, SVG text or PNG bytes out.

matplotlib is imported inside the functions only, so that the static commands never import it; it
is the `report` extra, not part of the light install (without it: MissingExtra, one line).
Figures are made with `matplotlib.figure.Figure` (no pyplot, no GUI backend). The SVG is
post-processed to stay small and to be inlined several times in one HTML page: no XML header or
metadata, numbers rounded to 0.1 pt, element ids prefixed per figure so that they never clash.

The per-layer figures are drawn by one reused `Figure` per kind whose lines get new data for
every layer: building a figure costs 4x more than drawing it, and a model may have hundreds of BN
layers.

Layer: reporters (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import io
import math
import re
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from bninspect.errors import MissingExtra
from bninspect.untrusted import plot_text

if TYPE_CHECKING:  # only for annotations: the reporters never import the probes at run time
    from bninspect.model import BNLayer
    from bninspect.probes.results import LayerProbe, ProbeReport
    from bninspect.report import ModelReport

# The overview figure: inches and dots per inch of `overview_png` (1000 x 640 pixels).
OVERVIEW_SIZE = (10.0, 6.4)
PNG_DPI = 100
# Per-channel plots draw at most this many points per line; wider layers are shown as the min/max
# of consecutive channel bins (said in the panel title).
MAX_POINTS = 128
FLAGGED = "#d62728"
BAND = "#1f77b4"

_RC = {
    "svg.fonttype": "none",  # text as <text>, not glyph paths
    "svg.hashsalt": "bninspect",  # deterministic ids
    "svg.image_inline": True,
    "font.size": 7.0,
    "axes.titlesize": 7.5,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "path.simplify": True,
}


def _log_axis(axis, ticker, numticks: int) -> None:
    """Log ticks at powers of ten labelled as plain numbers (no mathtext), no minor ticks."""
    axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0), numticks=numticks))
    axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:.3g}"))
    axis.set_minor_locator(ticker.NullLocator())


def require_matplotlib(needed_for: str = "drawing the report's figures") -> None:
    """Raise MissingExtra when matplotlib (the `report` extra, not in the light install) is missing.

    `bninspect report` calls it first, so it stops before reading or running any model.
    """
    _matplotlib(needed_for)


def _matplotlib(needed_for: str = "drawing the report's figures"):
    try:
        import matplotlib
    except ModuleNotFoundError as error:
        if error.name != "matplotlib":  # a broken matplotlib install keeps its own error
            raise
        raise MissingExtra(needed_for, "matplotlib", "report") from None

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return matplotlib, Figure


class _Figures:
    """rc settings applied while figures are built and drawn."""

    def __init__(self) -> None:
        self.matplotlib, self.Figure = _matplotlib()

    def context(self):
        return self.matplotlib.rc_context(_RC)


# --- SVG post-processing ------------------------------------------------------------------------

_HEADER = re.compile(r"^.*?(?=<svg)", re.S)
_METADATA = re.compile(r"\s*<metadata>.*?</metadata>", re.S)
_GLOBAL_STYLE = re.compile(r"\s*<style type=\"text/css\">[^<]*</style>")
_FONT_FAMILY = re.compile(r"font-family: [^;\"]*;? ?")
_ZERO_ROTATE = re.compile(r" transform=\"rotate\(-?0 [^)]*\)\"")
# matplotlib names every group; only the groups bninspect names itself (gid "bn-...") keep an id.
_GROUP_ID = re.compile(r"<g id=\"(?!bn-)[^\"]*\"")
# matplotlib names an embedded image by a hash of its pixels, so equal images (the gradients of
# colour bars) share an id; nothing refers to it.
_IMAGE_ID = re.compile(r"(<image [^>]*?) id=\"[^\"]*\"")
_NUMERIC_ATTR = re.compile(r"\b(d|x|y|width|height|viewBox|transform|points)=\"([^\"]*)\"")
_LONG_NUMBER = re.compile(r"(-?\d+\.\d)\d+")
_PATH_SPACE = re.compile(r"\s*\n\s*")
_USE_RUN = re.compile(r"((?:\s*<use [^>]*/>)+)")
_USE_STYLE = re.compile(r" style=\"([^\"]*)\"")
_ID_ATTR = re.compile(r"\bid=\"([^\"]+)\"")


_PATH_TOKEN = re.compile(r"([MLCQZz])([^MLCQZz]*)")


def _compact_path(d: str) -> str:
    """Path data with the least text: no spaces around commands, and line segments that keep x or
    y written as H / V (a per-channel step line is nothing else)."""
    out, x, y = [], None, None
    for command, args in _PATH_TOKEN.findall(d):
        numbers = args.split()
        if command == "L" and len(numbers) == 2:
            if numbers[1] == y:
                out.append("H" + numbers[0])
            elif numbers[0] == x:
                out.append("V" + numbers[1])
            else:
                out.append(f"L{numbers[0]} {numbers[1]}")
            x, y = numbers
            continue
        out.append(command + " ".join(numbers))
        x, y = (numbers[-2], numbers[-1]) if len(numbers) >= 2 else (None, None)
    return "".join(out)


_MATRIX_NUMBER = re.compile(r"(-?\d+\.\d{4})\d+")


def _round_numbers(match: re.Match) -> str:
    # A matrix scales: an embedded image's 0.7776 pt per pixel rounded to 0.8 would overflow its
    # axes by 3% per 100 pixels. Its factors keep 4 decimals.
    rounding = _MATRIX_NUMBER if match.group(2).startswith("matrix(") else _LONG_NUMBER
    value = rounding.sub(r"\1", match.group(2))
    if match.group(1) == "d":
        value = _compact_path(value)
    return f'{match.group(1)}="{value}"'


def _hoist_use_styles(svg: str) -> str:
    """Markers are written as one <use> per point, each repeating the same style attribute: move it
    to a <g> around the run (the same inheritance, a fraction of the bytes)."""

    def hoist(match: re.Match) -> str:
        run = match.group(1)
        styles = set(_USE_STYLE.findall(run))
        if len(styles) != 1 or run.count("<use ") < 3:
            return run
        return f'<g style="{styles.pop()}">{_USE_STYLE.sub("", run)}</g>'

    return _USE_RUN.sub(hoist, svg)


_PATH_COMMAND = re.compile(r" ?([MLCQZz]) ")
_G_TAG = re.compile(r"(<g(?: [^>]*)?>|</g>)")
_DEF_PATH = re.compile(r"<path id=\"([^\"]+)\" d=\"[^\"]*\" style=\"([^\"]*)\"")


def _drop_bare_groups(svg: str) -> str:
    """`<g>` without attributes only nests: drop it and its end tag (and empty groups)."""
    out, stack = [], []
    for index, piece in enumerate(_G_TAG.split(svg)):
        if index % 2 == 0:
            out.append(piece)
        elif piece == "</g>":
            if stack.pop():
                out.append(piece)
        else:
            keep = piece != "<g>"
            stack.append(keep)
            if keep:
                out.append(piece)
    return "".join(out).replace("<g/>", "")


def _drop_redundant_use_styles(svg: str) -> str:
    """A <use> whose style repeats its referenced path's style adds nothing (e.g. every tick mark)."""
    for name, style in _DEF_PATH.findall(svg):
        svg = re.sub(f'(<use xlink:href="#{re.escape(name)}" x="[^"]*" y="[^"]*") style="{re.escape(style)}"',
                     r"\1", svg)
    return svg


def clean_svg(svg: str, prefix: str) -> str:
    """matplotlib's SVG made fit to inline: smaller, deterministic, ids prefixed with `prefix`."""
    svg = _HEADER.sub("", svg, count=1)
    svg = _METADATA.sub("", svg, count=1)
    svg = _GLOBAL_STYLE.sub("", svg)
    svg = svg.replace("<defs></defs>", "").replace("<defs>\n </defs>", "")
    svg = _FONT_FAMILY.sub("", svg)
    svg = _ZERO_ROTATE.sub("", svg)
    svg = _GROUP_ID.sub("<g", svg)
    svg = _IMAGE_ID.sub(r"\1", svg)
    svg = _NUMERIC_ATTR.sub(_round_numbers, svg)
    svg = re.sub(r">\s+<", "><", svg)
    svg = _drop_bare_groups(svg)
    svg = _drop_redundant_use_styles(svg)
    svg = _hoist_use_styles(svg)
    ids = set(_ID_ATTR.findall(svg))
    for name in sorted(ids, key=len, reverse=True):
        svg = svg.replace(f'id="{name}"', f'id="{prefix}{name}"').replace(f"#{name}\"", f"#{prefix}{name}\"") \
                 .replace(f"#{name})", f"#{prefix}{name})")
    svg = svg.replace("<svg ", '<svg class="plot" role="img" ', 1)
    return svg.strip()


def _svg(figure, prefix: str) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    return clean_svg(buffer.getvalue(), prefix)


# --- small helpers --------------------------------------------------------------------------------

def _finite(values: np.ndarray, positive: bool = False) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(values)
    if positive:
        keep &= values > 0
    return values[keep]


def _limits(values: np.ndarray, log: bool) -> tuple[float, float] | None:
    """Axis limits with a margin, or None when there is nothing drawable."""
    finite = _finite(values, positive=log)
    if finite.size == 0:
        return None
    low, high = float(finite.min()), float(finite.max())
    if log:
        low, high = math.log10(low), math.log10(high)
    span = high - low
    pad = span * 0.08 if span > 0 else max(abs(high) * 0.1, 0.5 if log else 0.1)
    low, high = low - pad, high + pad
    return (10 ** low, 10 ** high) if log else (low, high)


def reduce_channels(values: np.ndarray, limit: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(x, low, high, bin width): the values themselves (low == high) when they fit in `limit`
    points, else the min/max over bins of consecutive channels (NaN-aware)."""
    values = np.asarray(values, dtype=np.float64)
    count = values.size
    if count <= limit:
        x = np.arange(count, dtype=np.float64)
        return x, values, values, 1
    width = math.ceil(count / limit)
    padded = np.full(width * math.ceil(count / width), np.nan)
    padded[:count] = values
    bins = padded.reshape(-1, width)
    with np.errstate(invalid="ignore"), _no_nan_warnings():
        low = np.nanmin(bins, axis=1)
        high = np.nanmax(bins, axis=1)
    x = np.arange(bins.shape[0], dtype=np.float64) * width + (width - 1) / 2
    return x, low, high, width


class _no_nan_warnings:
    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)


def effective_scale(layer: "BNLayer") -> np.ndarray:
    """|gamma| / sqrt(moving_variance + epsilon); gamma is 1 when the layer has none (scale=False)."""
    from bninspect.rules.stats import effective_scale as scale

    return scale(layer)


def _stats(values: np.ndarray | None, positive: bool = False) -> tuple[float, float, float]:
    """min, median, max of the finite values (of the positive ones, for a log axis)."""
    if values is None:
        return (math.nan, math.nan, math.nan)
    finite = _finite(values, positive=positive)
    if finite.size == 0:
        return (math.nan, math.nan, math.nan)
    return float(finite.min()), float(np.median(finite)), float(finite.max())


# --- the overview along the depth -----------------------------------------------------------------

_OVERVIEW_PANELS = (("gamma", "gamma", False), ("beta", "beta", False), ("moving_mean", "moving mean", False),
                    ("moving_variance", "moving variance (log)", True))


def _overview_figure(figures: _Figures, report: "ModelReport"):
    layers = report.bn_layers
    flagged = {finding.layer for finding in report.findings if finding.layer is not None}
    figure = figures.Figure(figsize=OVERVIEW_SIZE, dpi=PNG_DPI)
    axes = figure.subplots(len(_OVERVIEW_PANELS), 1, sharex=True)
    x = np.arange(len(layers), dtype=np.float64)
    marks = np.array([index for index, layer in enumerate(layers) if layer.path in flagged], dtype=np.float64)
    for ax, (name, label, log) in zip(axes, _OVERVIEW_PANELS):
        # No gamma (scale=False) multiplies by 1.
        stats = np.array([_stats(np.ones(layer.channels) if name == "gamma" and layer.gamma is None
                                 else getattr(layer, name), positive=log) for layer in layers]).reshape(-1, 3)
        if log:
            ax.set_yscale("log")
        ax.fill_between(x, stats[:, 0], stats[:, 2], color=BAND, alpha=0.25, linewidth=0, label="min-max")
        ax.plot(x, stats[:, 1], color=BAND, linewidth=1.0, marker="." if len(layers) <= 40 else None,
                markersize=3, label="median")
        limits = _limits(stats, log)
        if limits is None:
            ax.text(0.5, 0.5, "no finite values" if not log else "no positive values", transform=ax.transAxes,
                    ha="center", va="center", color="#666666")
        else:
            ax.set_ylim(*limits)
        if marks.size:
            _layer_marks(ax, marks, "layer with findings")
        ax.set_ylabel(label)
        if log:
            _log_axis(ax.yaxis, figures.matplotlib.ticker, 4)
        else:
            ax.yaxis.set_major_locator(figures.matplotlib.ticker.MaxNLocator(4))
        ax.grid(True, axis="y", linewidth=0.3, color="#dddddd")
    _depth_axis(figures, axes[-1], x, [layer.path for layer in layers], "BN layer (graph order)")
    axes[0].legend(loc="upper right", fontsize=6, ncols=3, frameon=False, bbox_to_anchor=(1.0, 1.35))
    axes[0].set_title(f"{len(layers)} BN layers along the depth: per-layer min-max band and median of the channels",
                      loc="left")
    figure.subplots_adjust(left=0.08, right=0.98, top=0.92, bottom=0.13 if len(layers) <= 24 else 0.09, hspace=0.12)
    return figure


# Up to this many marked layers get a ▼ each; more are drawn as one path of ticks (a marker is an
# SVG element of its own: 2,000 of them per panel cost more than the rest of the figure).
MARKERS_LIMIT = 40


def _layer_marks(ax, marks: np.ndarray, label: str | None) -> None:
    """Marks above the panel at the x positions `marks` (layers with findings, drifting layers)."""
    transform = ax.get_xaxis_transform()
    if marks.size <= MARKERS_LIMIT:
        ax.plot(marks, np.full(marks.size, 1.0), linestyle="none", marker="v", markersize=4, color=FLAGGED,
                transform=transform, clip_on=False, label=label)
        return
    x = np.repeat(marks, 3)
    y = np.tile([0.94, 1.04, np.nan], marks.size)
    ax.plot(x, y, color=FLAGGED, linewidth=0.6, transform=transform, clip_on=False, label=label)


def _depth_axis(figures, axis, x, names: list[str], label: str) -> None:
    """The x axis of a plot along the depth: the layer names when they fit, else numbered ticks."""
    if 0 < len(names) <= 24:
        axis.set_xticks(x)
        axis.set_xticklabels([plot_text(name) for name in names], rotation=30, ha="right")
    else:
        axis.xaxis.set_major_locator(figures.matplotlib.ticker.MaxNLocator(10, integer=True))
        axis.set_xlabel(label)
    axis.set_xlim(-0.5, max(len(names) - 0.5, 0.5))


def overview_svg(report: "ModelReport", prefix: str = "ov-") -> str:
    """The overview of one model's BN layers along the depth, as inline SVG."""
    figures = _Figures()
    with figures.context():
        return _svg(_overview_figure(figures, report), prefix)


def overview_png(report: "ModelReport") -> bytes:
    """The overview figure as PNG: OVERVIEW_SIZE inches at PNG_DPI (1000 x 640 pixels)."""
    figures = _Figures()
    with figures.context():
        figure = _overview_figure(figures, report)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=PNG_DPI, metadata={"Software": None})
    return buffer.getvalue()


# --- per-layer figures (one reused figure per kind) -----------------------------------------------

_CHANNEL_PANELS = (("gamma", False), ("beta", False), ("moving mean", False), ("moving variance", True),
                   ("effective scale", True))


class ChannelPlotter:
    """Per-channel plots of one BN layer: gamma, beta, moving mean, moving variance (log) and the
    effective scale |gamma|/sqrt(var+eps) (log); highlighted channels marked in red.

    Drawn hundreds of times, so kept cheap: titles are plain texts (not axes titles, whose placement
    measures every tick label), and each axis has two ticks: the first and last channel, and the
    smallest and largest value.
    """

    def __init__(self) -> None:
        self.figures = _Figures()
        ticker = self.figures.matplotlib.ticker
        self.ticker = ticker
        with self.figures.context():
            self.figure = self.figures.Figure(figsize=(10.0, 1.45))
            self.figure.patch.set_visible(False)
            self.axes = self.figure.subplots(1, len(_CHANNEL_PANELS))
            self.high, self.low, self.marks, self.notes, self.titles, self.labels = [], [], [], [], [], []
            for ax, (title, log) in zip(self.axes, _CHANNEL_PANELS):
                ax.patch.set_visible(False)
                if log:
                    ax.set_yscale("log")
                    ax.yaxis.set_minor_locator(ticker.NullLocator())
                ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:.3g}"))
                self.high.append(ax.plot([], [], color=BAND, linewidth=0.9, drawstyle="steps-mid")[0])
                self.low.append(ax.plot([], [], color=BAND, linewidth=0.6, drawstyle="steps-mid", alpha=0.6)[0])
                self.marks.append(ax.plot([], [], linestyle="none", marker="o", markersize=3, color=FLAGGED)[0])
                self.notes.append(ax.text(0.5, 0.5, "", transform=ax.transAxes, ha="center", va="center",
                                          color="#666666"))
                self.titles.append(ax.text(0.0, 1.04, title, transform=ax.transAxes, ha="left", va="bottom",
                                           fontsize=7.5))
                # Tick labels as plain texts: matplotlib's own tick labels cost half the drawing time.
                ax.tick_params(labelbottom=False, labelleft=False)
                y_labels = ax.get_yaxis_transform()
                x_labels = ax.get_xaxis_transform()
                self.labels.append((ax.text(-0.03, 0, "", transform=y_labels, ha="right", va="center"),
                                    ax.text(-0.03, 1, "", transform=y_labels, ha="right", va="center"),
                                    ax.text(0, -0.05, "", transform=x_labels, ha="center", va="top"),
                                    ax.text(1, -0.05, "", transform=x_labels, ha="center", va="top")))
            self.figure.subplots_adjust(left=0.05, right=0.995, top=0.84, bottom=0.15, wspace=0.3)

    def svg(self, layer: "BNLayer", highlight: Iterable[int] = (), prefix: str = "ch-") -> str:
        channels = layer.channels
        gamma = layer.gamma if layer.gamma is not None else np.ones(channels)
        series = (gamma, layer.beta, layer.moving_mean, layer.moving_variance, effective_scale(layer))
        chosen = np.array(sorted({int(c) for c in highlight if 0 <= int(c) < channels}), dtype=np.int64)
        with self.figures.context():
            for index, (ax, (title, log), values) in enumerate(zip(self.axes, _CHANNEL_PANELS, series)):
                self._panel(index, ax, title, log, values, chosen, channels,
                            missing="no gamma (scale=False): 1" if index == 0 and layer.gamma is None else
                            "no beta (center=False)" if index == 1 and layer.beta is None else None)
            return _svg(self.figure, prefix)

    def _panel(self, index: int, ax, title: str, log: bool, values: np.ndarray | None, chosen: np.ndarray,
               channels: int, missing: str | None) -> None:
        high, low, marks, note = self.high[index], self.low[index], self.marks[index], self.notes[index]
        ax.set_xlim(-0.5, max(channels - 0.5, 0.5))
        ax.xaxis.set_major_locator(self.ticker.FixedLocator([0, channels - 1] if channels > 1 else [0]))
        labels = self.labels[index]
        labels[2].set_text("0")
        labels[3].set_position((channels - 1, -0.05))
        labels[3].set_text(str(channels - 1) if channels > 1 else "")
        title = title + (" (log)" if log else "")
        if values is None:
            for line in (high, low, marks):
                line.set_data([], [])
            note.set_text(missing or "")
            note.set_visible(bool(missing))
            self._y(ax, log, None, labels)
            self.titles[index].set_text(title)
            return
        x, lo, hi, width = reduce_channels(values)
        high.set_data(x, np.where(hi > 0, hi, np.nan) if log else hi)
        low.set_data((x, np.where(lo > 0, lo, np.nan) if log else lo) if width > 1 else ([], []))
        low.set_visible(width > 1)
        marks.set_data(chosen.astype(np.float64), np.asarray(values, dtype=np.float64)[chosen])
        marks.set_visible(chosen.size > 0)
        finite = _finite(values, positive=log)
        if finite.size == 0:
            note.set_text("no positive finite values" if log else "no finite values")
        else:
            note.set_text(missing or "")
        note.set_visible(bool(note.get_text()))
        self._y(ax, log, finite if finite.size else None, labels)
        self.titles[index].set_text(title)

    def _y(self, ax, log: bool, finite: np.ndarray | None, labels) -> None:
        if finite is None:
            ax.set_ylim(*((0.1, 10.0) if log else (-1.0, 1.0)))
            ax.yaxis.set_major_locator(self.ticker.NullLocator())
            labels[0].set_text("")
            labels[1].set_text("")
            return
        ax.set_ylim(*_limits(finite, log))
        low, high = float(finite.min()), float(finite.max())
        ax.yaxis.set_major_locator(self.ticker.FixedLocator([low, high] if high > low else [low]))
        labels[0].set_position((-0.03, low))
        labels[0].set_text(f"{low:.3g}")
        labels[1].set_position((-0.03, high))
        labels[1].set_text(f"{high:.3g}" if high > low else "")


class ObservedPlotter:
    """Stored vs observed statistics of one BN layer's input: the moving mean against the observed
    mean, the moving variance against the observed variance (log-log), each with the line y = x."""

    def __init__(self) -> None:
        self.figures = _Figures()
        with self.figures.context():
            self.figure = self.figures.Figure(figsize=(6.0, 2.3))
            self.axes = self.figure.subplots(1, 2)
            self.points, self.drift, self.diagonal, self.notes = [], [], [], []
            for ax, log in zip(self.axes, (False, True)):
                if log:
                    ax.set_xscale("log")
                    ax.set_yscale("log")
                self.diagonal.append(ax.plot([], [], color="#888888", linewidth=0.7, linestyle="--",
                                             label="y = x")[0])
                self.points.append(ax.plot([], [], linestyle="none", marker="o", markersize=2.5, color=BAND,
                                           alpha=0.8, label="channel")[0])
                self.drift.append(ax.plot([], [], linestyle="none", marker="o", markersize=3, color=FLAGGED,
                                          label="drifting channel")[0])
                self.notes.append(ax.text(0.5, 0.5, "", transform=ax.transAxes, ha="center", va="center",
                                          color="#666666"))
                ticker = self.figures.matplotlib.ticker
                for axis in (ax.xaxis, ax.yaxis):
                    if log:
                        _log_axis(axis, ticker, 4)
                    else:
                        axis.set_major_locator(ticker.MaxNLocator(4))
            self.axes[0].set_xlabel("moving mean (stored)")
            self.axes[0].set_ylabel("observed mean")
            self.axes[1].set_xlabel("moving variance (stored)")
            self.axes[1].set_ylabel("observed variance")
            self.axes[0].legend(loc="upper left", fontsize=5.5, frameon=False)
            self.figure.subplots_adjust(left=0.11, right=0.98, top=0.9, bottom=0.2, wspace=0.35)

    def svg(self, probe: "LayerProbe", drifting: np.ndarray | None = None, prefix: str = "obs-") -> str:
        pairs = ((probe.moving_mean, probe.input.mean, False),
                 (np.maximum(probe.moving_variance, 0.0), probe.input.variance, True))
        reached = np.asarray(probe.input.count) > 0
        drifting = np.zeros(reached.shape, dtype=bool) if drifting is None else np.asarray(drifting, dtype=bool)
        with self.figures.context():
            for index, (ax, (stored, observed, log)) in enumerate(zip(self.axes, pairs)):
                stored = np.asarray(stored, dtype=np.float64)
                observed = np.asarray(observed, dtype=np.float64)
                keep = reached & np.isfinite(stored) & np.isfinite(observed)
                if log:
                    keep &= (stored > 0) & (observed > 0)
                keep_index = np.flatnonzero(keep)
                shown = keep_index
                if shown.size > MAX_POINTS:
                    shown = shown[np.linspace(0, shown.size - 1, MAX_POINTS).astype(np.int64)]
                marked = keep_index[drifting[keep_index]][:MAX_POINTS]
                self.points[index].set_data(stored[shown], observed[shown])
                self.drift[index].set_data(stored[marked], observed[marked])
                both = np.concatenate([stored[keep_index], observed[keep_index]])
                limits = _limits(both, log)
                if limits is None:
                    self.diagonal[index].set_data([], [])
                    self.notes[index].set_text("no data reached this layer" if not reached.any() else
                                               "no positive finite values" if log else "no finite values")
                    limits = (0.1, 10) if log else (-1, 1)
                else:
                    self.diagonal[index].set_data(limits, limits)
                    note = f"{shown.size} of {keep_index.size} channels shown" if shown.size < keep_index.size else ""
                    self.notes[index].set_text(note)
                    self.notes[index].set_position((0.5, 0.06))
                ax.set_xlim(*limits)
                ax.set_ylim(*limits)
            return _svg(self.figure, prefix)


def drift_svg(probe: "ProbeReport", drifting_paths: Sequence[str] = (), prefix: str = "drift-") -> str:
    """The drift measure along the depth (the order the data reaches the BN layers): per layer the
    median and max over channels of the mean shift |observed mean - moving mean| / stored std, and
    the median and min-max band of the variance ratio (log), with the BN101 thresholds; layers with
    a BN101 finding (`drifting_paths`) marked, the first one named."""
    figures = _Figures()
    layers = sorted((layer for layer in probe.layers if layer.reached), key=lambda layer: layer.order)
    thresholds = probe.thresholds
    x = np.arange(len(layers), dtype=np.float64)
    shift = np.array([_stats(layer.mean_shift) for layer in layers]).reshape(-1, 3)
    ratio = np.array([_stats(layer.variance_ratio, positive=True) for layer in layers]).reshape(-1, 3)
    flagged = set(drifting_paths)
    marks = np.array([index for index, layer in enumerate(layers) if layer.path in flagged], dtype=np.float64)
    with figures.context():
        figure = figures.Figure(figsize=(10.0, 3.2))
        top, bottom = figure.subplots(2, 1, sharex=True)
        top.plot(x, shift[:, 1], color=BAND, linewidth=1.0, marker=".", markersize=3, label="median")
        top.plot(x, shift[:, 2], color=BAND, linewidth=0.7, linestyle=":", label="max")
        top.axhline(thresholds.drift_mean_shift, color="#888888", linewidth=0.7, linestyle="--",
                    label=f"threshold {thresholds.drift_mean_shift:g}")
        top.set_ylabel("mean shift\n(stored std)")
        finite_shift = _finite(shift)
        top.set_ylim(0, max(float(finite_shift.max()) if finite_shift.size else 0.0,
                            thresholds.drift_mean_shift) * 1.15)
        top.yaxis.set_major_locator(figures.matplotlib.ticker.MaxNLocator(4))
        bottom.set_yscale("log")
        _log_axis(bottom.yaxis, figures.matplotlib.ticker, 4)
        bottom.fill_between(x, ratio[:, 0], ratio[:, 2], color=BAND, alpha=0.25, linewidth=0, label="min-max")
        bottom.plot(x, ratio[:, 1], color=BAND, linewidth=1.0, marker=".", markersize=3, label="median")
        for value in (thresholds.drift_variance_ratio, 1.0 / thresholds.drift_variance_ratio):
            bottom.axhline(value, color="#888888", linewidth=0.7, linestyle="--")
        bottom.set_ylabel("variance ratio\nobserved / stored")
        limits = _limits(np.concatenate([ratio.ravel(), [thresholds.drift_variance_ratio,
                                                          1.0 / thresholds.drift_variance_ratio]]), True)
        if limits is not None:
            bottom.set_ylim(*limits)
        for ax in (top, bottom):
            if marks.size:
                _layer_marks(ax, marks, "BN101 (drifting)" if ax is top else None)
            ax.grid(True, axis="y", linewidth=0.3, color="#dddddd")
        if marks.size:
            first = int(marks[0])
            top.annotate(f"first drifting: {plot_text(layers[first].path)}", (first, 1.0),
                         xycoords=top.get_xaxis_transform(), xytext=(4, 6), textcoords="offset points",
                         color=FLAGGED, fontsize=6.5)
        _depth_axis(figures, bottom, x, [layer.path for layer in layers], "BN layer (order the data reaches it)")
        top.legend(loc="upper right", fontsize=6, ncols=4, frameon=False, bbox_to_anchor=(1.0, 1.3))
        figure.subplots_adjust(left=0.09, right=0.98, top=0.88, bottom=0.27 if len(layers) <= 24 else 0.15,
                               hspace=0.1)
        return _svg(figure, prefix)
