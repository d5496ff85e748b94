"""`bninspect report`: one self-contained HTML page (inline CSS and SVG, no script, nothing fetched).

Plain data in, text out: `render_html(reports, probes)` takes ModelReports (and, for `--data`, the
ProbeReport of each model, or None) and returns the page. Per model: a header, the findings with
their hints and links to the rule documentation (included for the codes that occur), the overview
along the depth, one channels x layers heatmap figure of every statistic (reporters/heatmap.py),
with probes the drift along the depth, per-layer plots (and stored vs observed statistics) for a
few layers (reporters/detail.py chooses them), and a table with one row per BN layer.

The cost of a page grows with the number of figures matplotlib draws, not with the depth: a few
figures per model, whatever its number of BN layers.

Layer: reporters (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING, Sequence

import numpy as np

from bninspect._version import __version__
from bninspect.findings import Finding, Severity
from bninspect.report import architecture_label
from bninspect.reporters.grouping import LAYERS_SHOWN, group_findings
from bninspect.untrusted import html_text

if TYPE_CHECKING:
    from bninspect.probes.results import ProbeReport
    from bninspect.report import ModelReport

# The detailed layer sections start unfolded when a model has at most this many.
OPEN_LIMIT = 4

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;padding:0 16px 40px;color:#222}
h1{font-size:22px;margin:18px 0 4px}h2{font-size:18px;margin:26px 0 6px;border-bottom:1px solid #ddd;padding-bottom:3px}
h3{font-size:15px;margin:18px 0 6px}code,pre{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12.5px}
pre{background:#f6f6f6;padding:8px;overflow-x:auto}dl.meta{display:grid;grid-template-columns:max-content auto;gap:2px 14px;margin:6px 0}
dl.meta dt{color:#666}dl.meta dd{margin:0}table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border-bottom:1px solid #eee;padding:3px 6px;text-align:left;vertical-align:top}th{background:#fafafa}
.sev{font-weight:600;text-transform:uppercase;font-size:11px}.sev-error{color:#c62828}.sev-warning{color:#b26a00}.sev-info{color:#1565c0}
.hint{color:#555}.error{color:#c62828;font-weight:600}.ok{color:#2e7d32}
svg.plot{width:100%;height:auto;display:block}svg.plot text{font-family:system-ui,"DejaVu Sans",sans-serif}
svg.plot *{stroke-linejoin:round;stroke-linecap:butt}
details.bn-detail{border:1px solid #e3e3e3;border-radius:4px;margin:6px 0;padding:2px 8px}
details.bn-detail>summary{cursor:pointer;padding:3px 0}details.bn-detail.flagged{border-left:4px solid #d62728}
table.bn-layers{font-size:12px}table.bn-layers td{padding:1px 5px;white-space:nowrap}table.bn-layers td.path{white-space:normal}
tr.bn-layer.flagged td:first-child{border-left:4px solid #d62728}tr.bn-layer:target{background:#fff6d5}
td.flagged-channels{color:#d62728;white-space:normal!important}a.plots{font-size:11px}
.codes{color:#c62828;font-weight:600}.muted{color:#777}.rule{border-top:1px solid #eee;margin-top:10px}
figure{margin:6px 0}figure.observed svg.plot{max-width:600px}figure.overview svg.plot,figure.heatmap svg.plot{max-width:960px}figcaption{color:#666;font-size:12px}
"""


def _e(value: object) -> str:
    """Any text on the page: file and layer names, messages, numbers. Through `printable` first,
    since HTML escaping leaves control characters (and bidirectional overrides) as they are."""
    return html_text(value)


def _id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


_CHANNELS = re.compile(r"\bchannels? ((?:\d+(?: \(= [^)]*\))?(?:, (?=\d))?)+)")


def finding_channels(finding: Finding) -> set[int]:
    """The channel indices a finding's message names ("channels 1, 4 and 3 more": 1 and 4); empty
    when the message gives only a count."""
    channels: set[int] = set()
    for match in _CHANNELS.finditer(finding.message):
        for item in match.group(1).split(", "):
            number = item.split(" ", 1)[0]
            if number.isdigit():
                channels.add(int(number))
    return channels


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.4g}"


# --- rule documentation (Markdown subset of the catalogue) -----------------------------------------

_INLINE_CODE = re.compile(r"`([^`]*)`")


def _inline(text: str) -> str:
    parts = _INLINE_CODE.split(text)
    return "".join(f"<code>{_e(part)}</code>" if index % 2 else _e(part) for index, part in enumerate(parts))


def markdown_html(markdown: str) -> str:
    """The catalogue's Markdown as HTML: fenced code blocks, paragraphs, inline code. All text escaped."""
    out = []
    pieces = re.split(r"^```[a-z]*\n(.*?)^```$", markdown, flags=re.M | re.S)
    for index, piece in enumerate(pieces):
        if index % 2:
            # The catalogue's own example code: its newlines and indentation are kept.
            out.append(f"<pre><code>{html.escape(piece.rstrip())}</code></pre>")
            continue
        for paragraph in re.split(r"\n\s*\n", piece.strip()):
            if paragraph.strip():
                out.append(f"<p>{_inline(' '.join(paragraph.split()))}</p>")
    return "".join(out)


def _rule_docs(codes: Sequence[str]) -> str:
    from bninspect.rules.catalogue import RULES_BY_CODE
    from bninspect.rules.docs import SECTIONS

    parts = []
    for code in codes:
        rule = RULES_BY_CODE.get(code)
        if rule is None:
            continue
        body = "".join(f"<h4>{_e(heading)}</h4>{markdown_html(getattr(rule, attribute))}"
                       for heading, attribute in SECTIONS)
        parts.append(f'<article class="rule" id="rule-{_e(rule.code)}"><h3>{_e(rule.code)} {_e(rule.name)} '
                     f'<span class="sev sev-{_e(rule.severity.value)}">{_e(rule.severity.value)}</span></h3>'
                     f"<p>{_inline(rule.summary)}</p>{body}</article>")
    if not parts:
        return ""
    return '<section id="rules"><h2>Rule documentation</h2>' + "".join(parts) + "</section>"


# --- one model -------------------------------------------------------------------------------------

def _header(report: "ModelReport") -> str:
    description = report.description
    rows = [("file", report.source)]
    if description is not None:
        rows += [("format", description.format), ("Keras version", description.keras_version or "unknown")]
        if description.keras_hub_version:
            rows.append(("KerasHub version", description.keras_hub_version))
        rows += [("architecture", architecture_label(description)),
                 ("BN layers", len(description.bn_layers))]
        steps = description.training_steps
        if steps is not None:
            rows.append(("training steps", steps))
        for note in description.notes:
            rows.append(("note", note))
    meta = "".join(f"<dt>{_e(key)}</dt><dd>{_e(value)}</dd>" for key, value in rows)
    return f'<dl class="meta">{meta}</dl>'


def _summary(findings: Sequence[Finding]) -> str:
    counts = {severity: sum(1 for f in findings if f.severity == severity) for severity in Severity}
    if not findings:
        return '<p class="ok">No findings.</p>'
    text = ", ".join(f'<span class="sev-{s.value}">{counts[s]} {s.value}{"s" if counts[s] != 1 else ""}</span>'
                     for s in (Severity.ERROR, Severity.WARNING, Severity.INFO))
    return f"<p>{text}</p>"


def _where(layer: str | None, layer_ids: dict[str, str]) -> str:
    if layer is None:
        return '<span class="muted">model</span>'
    return f'<a href="#{_e(layer_ids[layer])}">{_e(layer)}</a>' if layer in layer_ids else _e(layer)


def _findings_table(findings: Sequence[Finding], layer_ids: dict[str, str]) -> str:
    """One row per code and severity (errors first); a group of several layers names the first
    ones and folds the per-layer rows under its message."""
    if not findings:
        return ""
    rows = []
    for group in group_findings(findings):
        code = (f'<td><a href="#rule-{_e(group.code)}"><code>{_e(group.code)}</code></a>'
                f'<br><span class="muted">{_e(group.name)}</span></td>'
                f'<td class="sev sev-{_e(group.severity.value)}">{_e(group.severity.value)}</td>')
        if group.count == 1:
            finding = group.findings[0]
            rows.append(f'<tr class="finding">{code}<td>{_where(finding.layer, layer_ids)}</td>'
                        f'<td>{_e(finding.message)}<div class="hint">{_e(finding.hint)}</div></td></tr>')
            continue
        shown = [_where(f.layer, layer_ids) for f in group.findings[:LAYERS_SHOWN]]
        more = group.count - len(shown)
        layers = ", ".join(shown) + (f" and {more} more" if more else "")
        each = "".join(f'<tr class="finding-layer"><td>{_where(f.layer, layer_ids)}</td><td>{_e(f.message)}</td></tr>'
                       for f in group.findings)
        rows.append(f'<tr class="finding finding-group" data-count="{group.count}">{code}'
                    f'<td>{group.count} layers: {layers}</td>'
                    f'<td>{_e(group.message())}<div class="hint">{_e(group.hint)}</div>'
                    f'<details><summary>each of the {group.count} layers</summary><table class="finding-layers">'
                    f'<tbody>{each}</tbody></table></details></td></tr>')
    return ("<table class=\"findings\"><thead><tr><th>code</th><th>severity</th><th>layer</th>"
            "<th>message and hint</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _layer_config(layer) -> str:
    items = [("channels", layer.channels), ("axis", list(layer.axis) if layer.axis is not None else None),
             ("epsilon", layer.epsilon), ("momentum", layer.momentum), ("center", layer.center),
             ("scale", layer.scale), ("trainable", layer.trainable), ("dtype policy", layer.dtype_policy)]
    return '<p class="muted">' + " · ".join(f"{_e(k)} {_e('—' if v is None else v)}" for k, v in items) + "</p>"


def _drifting_mask(layer_probe, thresholds) -> np.ndarray:
    """The channels BN101 counts as drifting (the probe rules' own test)."""
    from bninspect.probes.rules import drifting_channels

    return drifting_channels(layer_probe, thresholds)


def _probe_summary(probe: "ProbeReport", drifting: Sequence[str]) -> str:
    parts = [f"{_e(probe.samples)} samples in {_e(probe.batches)} batches of {_e(probe.batch_size)}, "
             f"run with {_e(probe.keras)}."]
    if drifting:
        parts.append(f' First drifting layer: <a href="#{{first}}"><b>{_e(drifting[0])}</b></a> '
                     f"({len(drifting)} drifting layer{'s' if len(drifting) != 1 else ''}, BN101).")
    else:
        parts.append(" No BN layer drifts from its moving statistics on this data (BN101).")
    if probe.gap is not None:
        parts.append(f" Train/inference gap: {probe.gap.relative_difference:.1%}.")
    return "<p>" + "".join(parts) + "</p>"


def _model_section(index: int, report: "ModelReport", probe: "ProbeReport | None", plotters: dict,
                   pattern: str | None) -> str:
    from bninspect.reporters import plots
    from bninspect.reporters.detail import detail_layers
    from bninspect.reporters.heatmap import heatmap_svg

    prefix = f"m{index}"
    out = [f'<section class="model" id="{prefix}"><h2>{_e(report.source)}</h2>']
    if report.error is not None or report.description is None:
        out.append(f'<p class="error">could not read the model: {_e(report.error or "no description")}</p></section>')
        return "".join(out)
    layers = report.bn_layers
    layer_ids = {layer.path: f"{prefix}-bn-{position}-{_id(layer.path)}" for position, layer in enumerate(layers)}
    by_layer: dict[str, list[Finding]] = {}
    for finding in report.findings:
        if finding.layer is not None:
            by_layer.setdefault(finding.layer, []).append(finding)
    named = {path: set().union(*(finding_channels(f) for f in findings)) for path, findings in by_layer.items()}
    out.append(_header(report))
    out.append("<h3>Findings</h3>")
    out.append(_summary(report.findings))
    out.append(_findings_table(report.findings, layer_ids))
    if layers:
        out.append('<h3>Overview along the depth</h3><figure class="overview">')
        out.append(plots.overview_svg(report, prefix=f"{prefix}-ov-"))
        out.append("<figcaption>Per BN layer (graph order): the band spans the channels' min to max, the line is "
                   "their median; ▼ marks layers with findings.</figcaption></figure>")
        worst = {path: max(findings, key=lambda f: f.severity.rank).severity.value
                 for path, findings in by_layer.items()}
        out.append('<h3>Every channel of every BN layer</h3><figure class="heatmap">')
        out.append(heatmap_svg(layers, worst, named, prefix=f"{prefix}-hm-"))
        out.append("<figcaption>One row per BN layer (graph order, numbered as in the layer table below), one "
                   "column per channel; the strip on the left is the worst finding of the layer (red error, "
                   "orange warning, blue info), red rings mark the channels a finding names, grey cells are "
                   "past the layer's last channel or not drawable on a log scale. Colours span the 0.5–99.5 "
                   "percentiles of the panel.</figcaption></figure>")
    else:
        out.append('<p class="muted">No BatchNormalization layers.</p>')
    drifting: list[str] = []
    if probe is not None:
        order = {layer.path: layer.order for layer in probe.layers}
        drifting = sorted({f.layer for f in probe.findings if f.code == "BN101" and f.layer is not None},
                          key=lambda path: (order.get(path) is None, order.get(path) or 0))
        out.append('<h3>Stored vs observed statistics (on the data)</h3>')
        summary = _probe_summary(probe, drifting)
        if drifting:
            summary = summary.replace("{first}", _e(layer_ids.get(drifting[0], "")))
        out.append(summary)
        if any(layer.reached for layer in probe.layers):
            out.append('<figure class="drift">')
            out.append(plots.drift_svg(probe, drifting, prefix=f"{prefix}-drift-"))
            out.append("<figcaption>Per BN layer in the order the data reaches it: how far the observed input mean "
                       "is from the moving mean (in stored standard deviations) and the observed / stored variance "
                       "ratio; dashed lines are the BN101 thresholds, ▼ marks drifting layers.</figcaption></figure>")
    if not layers:
        out.append("</section>")
        return "".join(out)
    paths = [layer.path for layer in layers]
    detailed = detail_layers(paths, report.findings, pattern)
    detail_ids = {path: layer_ids[path] + "-plots" for path in detailed}
    out.append("<h3>Layer details</h3>")
    out.append(_detail_note(len(layers), len(by_layer), len(detailed), pattern))
    positions = {layer.path: position for position, layer in enumerate(layers)}
    open_all = len(detailed) <= OPEN_LIMIT
    for layer in layers:
        if layer.path in detail_ids:
            out.append(_layer_section(positions[layer.path], layer, by_layer.get(layer.path, []),
                                      named.get(layer.path, set()), detail_ids[layer.path], layer_ids[layer.path],
                                      probe, plotters, open_all))
    out.append(f"<h3>BN layers ({len(layers)})</h3>")
    out.append(_layer_table(layers, layer_ids, detail_ids, by_layer, named))
    out.append("</section>")
    return "".join(out)


def _detail_note(total: int, flagged: int, detailed: int, pattern: str | None) -> str:
    if pattern is not None:
        text = f"Per-channel plots of the {detailed} of {total} BN layers matching <code>--layers {_e(pattern)}</code>."
    elif detailed == total:
        text = "Per-channel plots of every BN layer."
    elif flagged == 0:
        text = ("No BN layer has findings, so no layer is drawn in detail; every channel is in the heatmaps above. "
                "<code>bninspect report MODEL --layers PATTERN</code> draws the matching layers.")
    else:
        text = (f"Per-channel plots of {detailed} of the {flagged} BN layers with findings (at least one layer per "
                "finding code); every channel of every layer is in the heatmaps above. "
                "<code>bninspect report MODEL --layers PATTERN</code> draws the matching layers instead "
                "(a glob on the layer path or name, <code>'*'</code> for all).")
    return f'<p class="muted">{text}</p>'


def _stat_ranges(layers) -> list[list[str]]:
    """Per layer: the min … max text of gamma, beta, moving mean, moving variance, effective scale."""
    from bninspect.reporters.plots import effective_scale
    from bninspect.summary import array_stats_many, fmt_number

    arrays = []
    for layer in layers:
        arrays += [layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance, effective_scale(layer)]
    texts = []
    for stats in array_stats_many(arrays):
        if not stats:
            texts.append("—")
            continue
        low, high = stats["min"], stats["max"]
        text = "—" if low is None else fmt_number(low) if low == high else f"{fmt_number(low)} … {fmt_number(high)}"
        if stats.get("non_finite"):
            text += f" ({stats['non_finite']} NaN/Inf)"
        texts.append(text)
    return [texts[index:index + 5] for index in range(0, len(texts), 5)]


def _layer_table(layers, layer_ids: dict[str, str], detail_ids: dict[str, str], by_layer: dict[str, list[Finding]],
                 named: dict[str, set[int]]) -> str:
    """One row per BN layer, whatever the depth: its number in the heatmaps, path (the row's id, the
    target of the findings' links), channels, the range of each statistic, its codes and the
    channels its findings name."""
    rows = []
    for position, (layer, ranges) in enumerate(zip(layers, _stat_ranges(layers))):
        findings = by_layer.get(layer.path, [])
        codes = " ".join(f'<a href="#rule-{_e(code)}">{_e(code)}</a>' for code in sorted({f.code for f in findings}))
        channels = sorted(named.get(layer.path, ()))
        plots_link = (f' <a class="plots" href="#{_e(detail_ids[layer.path])}">plots</a>'
                      if layer.path in detail_ids else "")
        flagged = " flagged" if findings else ""
        cells = "".join(f"<td>{_e(text)}</td>" for text in ranges)
        rows.append(f'<tr class="bn-layer{flagged}" id="{_e(layer_ids[layer.path])}"><td>#{position}</td>'
                    f'<td class="path">{_e(layer.path)}{plots_link}</td><td>{_e(layer.channels)}</td>{cells}'
                    f'<td class="codes">{codes}</td>'
                    f'<td class="flagged-channels" data-channels="{_e(",".join(map(str, channels)))}">'
                    f'{_e(", ".join(map(str, channels)))}</td></tr>')
    return ('<table class="bn-layers"><thead><tr><th>#</th><th>layer</th><th>channels</th><th>gamma</th>'
            "<th>beta</th><th>moving mean</th><th>moving variance</th><th>effective scale</th><th>findings</th>"
            "<th>flagged channels</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _layer_section(position: int, layer, findings: list[Finding], highlight: set[int], element_id: str,
                   row_id: str, probe, plotters: dict, is_open: bool) -> str:
    from bninspect.reporters import plots

    codes = sorted({finding.code for finding in findings})
    flagged = " flagged" if findings else ""
    summary = (f"<summary><b>{_e(layer.path)}</b> <span class=\"muted\">#{position} · {_e(layer.channels)} "
               f"channels</span> <span class=\"codes\">{_e(' '.join(codes))}</span></summary>")
    body = [_layer_config(layer) + f'<p class="muted"><a href="#{_e(row_id)}">its row in the layer table</a></p>']
    for finding in findings:
        body.append(f'<p><a href="#rule-{_e(finding.code)}"><code>{_e(finding.code)}</code></a> '
                    f'<span class="sev sev-{_e(finding.severity.value)}">{_e(finding.severity.value)}</span> '
                    f'{_e(finding.message)} <span class="hint">{_e(finding.hint)}</span></p>')
    if findings:
        body.append(f'<p class="muted">Highlighted channels: {_e(", ".join(map(str, sorted(highlight))))}</p>'
                    if highlight else
                    '<p class="muted">The findings name no channel indices: no channel is highlighted.</p>')
    if layer.channels > plots.MAX_POINTS:
        width = -(-layer.channels // plots.MAX_POINTS)
        body.append(f'<p class="muted">{layer.channels} channels: each line shows the min and max over bins of '
                    f"{width} consecutive channels.</p>")
    if "channels" not in plotters:
        plotters["channels"] = plots.ChannelPlotter()
    body.append('<figure class="channels">' + plotters["channels"].svg(layer, highlight, prefix=f"{element_id}-ch-")
                + "</figure>")
    if probe is not None:
        layer_probe = probe.layer(layer.path)
        if layer_probe is None or not layer_probe.reached:
            body.append('<p class="muted">The data did not reach this layer.</p>')
        else:
            if "observed" not in plotters:
                plotters["observed"] = plots.ObservedPlotter()
            mask = _drifting_mask(layer_probe, probe.thresholds)
            body.append(f'<figure class="observed">{plotters["observed"].svg(layer_probe, mask, prefix=f"{element_id}-obs-")}'
                        f"<figcaption>Stored vs observed input statistics per channel ({int(mask.sum())} of "
                        f"{layer_probe.channels} channels drift by BN101's thresholds); dashed: y = x."
                        "</figcaption></figure>")
    return (f'<details class="bn-detail{flagged}" id="{_e(element_id)}"{" open" if is_open else ""}>{summary}'
            + "".join(body) + "</details>")


def render_html(reports: Sequence["ModelReport"], probes: Sequence["ProbeReport | None"] | None = None,
                title: str = "bninspect report", layers: str | None = None) -> str:
    """The whole page. `probes[i]`, when given and not None, is the probe run of `reports[i]`;
    by default each report's own `probe` (set when it was run on data). `layers`: a glob (`--layers`)
    naming the BN layers drawn in detail, instead of a few of the layers with findings."""
    reports = list(reports)
    probe_list = list(probes) if probes is not None else [report.probe for report in reports]
    if len(probe_list) != len(reports):
        raise ValueError(f"{len(probe_list)} probes for {len(reports)} reports")
    plotters: dict = {}
    sections = [_model_section(index + 1, report, probe, plotters, layers)
                for index, (report, probe) in enumerate(zip(reports, probe_list))]
    codes = sorted({finding.code for report in reports for finding in report.findings})
    errors = sum(report.count(Severity.ERROR) for report in reports)
    warnings = sum(report.count(Severity.WARNING) for report in reports)
    infos = sum(report.count(Severity.INFO) for report in reports)
    head = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>")
    intro = (f"<h1>{_e(title)}</h1><p class=\"muted\">bninspect {_e(__version__)} · {len(reports)} model"
             f"{'s' if len(reports) != 1 else ''} · {errors} errors, {warnings} warnings, {infos} infos</p>")
    return head + intro + "".join(sections) + _rule_docs(codes) + "</body></html>\n"
