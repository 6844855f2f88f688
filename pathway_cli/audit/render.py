"""The audit as files: one CSV per figure, one JSON document, one self-contained HTML report.

The HTML report needs no server and no network: its charts are inline SVG and its style is
inline CSS, so it opens from a file, prints, and can be mailed to a commissioner as it is.
"""

from __future__ import annotations

import csv
import json
import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from pathway_cli.audit.compute import ALL, Audit, Cell, Table
from services.common.clock import LONDON

SERIES_COLOURS = ("#1f5fa8", "#c2410c", "#15803d", "#7e22ce", "#a16207", "#0e7490", "#be123c")
TARGET_COLOUR = "#b91c1c"


# --------------------------------------------------------------------------- plain values


def _plain(value: Cell) -> Cell:
    if isinstance(value, float):
        return round(value, 6)
    return value


def _csv_cell(value: Cell) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:.0f}"
    return str(value)


def audit_document(audit: Audit) -> dict[str, Any]:
    """Everything in the audit as JSON-ready data (no patient identifiers: figures only)."""
    return {
        "audit": "Rolling audit of the imaging pathway (guide section 4)",
        "window": {
            "start": audit.window_start.isoformat(),
            "end": audit.window_end.isoformat(),
            "days": audit.window_days,
            "timezone": "Europe/London",
        },
        "targets": asdict(audit.targets),
        "events": {
            "read": audit.events_read,
            "unique": audit.events_unique,
            "considered": audit.events_considered,
        },
        "referrals_seen": audit.referrals_seen,
        "capacity_known": audit.capacity_known,
        "notes": list(audit.notes),
        "providers": dict(audit.provider_names),
        "tables": {
            name: {
                "title": table.title,
                "dimensions": list(table.dimensions),
                "measures": list(table.measures),
                "rows": [{k: _plain(v) for k, v in r.items()} for r in table.records()],
            }
            for name, table in audit.tables.items()
        },
        "distributions": {
            "waits": [
                {
                    "priority": s.priority,
                    "provider": s.provider,
                    "site": s.site,
                    "modality": s.modality,
                    "wait_days": round(s.wait_days, 6),
                    "within_target": s.within_target,
                    "within_desirable": s.within_desirable,
                    "source": s.source,
                }
                for s in audit.waits
            ],
            "turnaround": [
                {
                    "provider": s.provider,
                    "modality": s.modality,
                    "rule": s.rule,
                    "hours": round(s.hours, 6),
                    "margin_hours": round(s.margin_hours, 6),
                    "within_target": s.within_target,
                }
                for s in audit.turnaround
            ],
        },
    }


def write_json(audit: Audit, path: Path) -> Path:
    path.write_text(json.dumps(audit_document(audit), indent=2) + "\n", "utf-8")
    return path


def write_csv(table: Table, path: Path) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(table.columns)
        for row in table.rows:
            writer.writerow([_csv_cell(v) for v in row])
    return path


# --------------------------------------------------------------------------- SVG charts

_SVG_STYLE = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;font-size:11px"
_CHAR_W = 6.2  # rough width of one 11px character, for laying out labels without a browser


def _svg_open(title: str, w: int, h: int) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {w} {h}" '
        f'style="{_SVG_STYLE}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="8" y="18" font-weight="600" font-size="13">{escape(title)}</text>',
    ]


def _target_line(x: float, y1: float, y2: float, value: float, label: str, label_y: float) -> str:
    anchor = "end" if x > 560 else "start"
    dx = -4 if anchor == "end" else 4
    return (
        f'<g class="target-line" data-value="{value:g}">'
        f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y1:.1f}" y2="{y2:.1f}" '
        f'stroke="{TARGET_COLOUR}" stroke-width="2" stroke-dasharray="6 4"/>'
        f'<text x="{x + dx:.1f}" y="{label_y:.1f}" text-anchor="{anchor}" '
        f'fill="{TARGET_COLOUR}">{escape(label)}</text></g>'
    )


def histogram_svg(
    title: str,
    x_label: str,
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    edges: Sequence[float],
    labels: Sequence[str] | None = None,
    lines: Sequence[tuple[float, str]] = (),
) -> str:
    """A stacked histogram over the bins between `edges`, drawn as equal-width columns.

    Values below the first edge count in the first bin and values from the last edge on in
    an extra open-ended bin, so nothing is dropped. Bins need not be equally wide (hours of
    turnaround read better as 0-1, 1-4, 4-8, ...). Each target line (class `target-line`)
    is placed at its value by interpolating between the edges.
    """
    bins = len(edges)  # len(edges) - 1 closed bins plus the open one at the end
    w = 760
    left, right, top, bottom = 44, 16, 40 + 14 * len(lines), 62
    h = top + 200 + bottom
    plot_w, plot_h = w - left - right, 200
    counts = [[0] * bins for _ in series]
    for s, (_, values) in enumerate(series):
        for v in values:
            counts[s][max(0, bisect_right(edges, v) - 1)] += 1
    totals = [sum(c[i] for c in counts) for i in range(bins)]
    peak = max([*totals, 1])
    y_step = max(1, math.ceil(peak / 5))
    y_max = y_step * math.ceil(peak / y_step)
    bar_w = plot_w / bins

    def x_at(value: float) -> float:
        i = bisect_right(edges, value) - 1
        if i < 0:
            return left
        if i >= len(edges) - 1:
            return left + (len(edges) - 1) * bar_w
        fraction = (value - edges[i]) / (edges[i + 1] - edges[i])
        return left + (i + fraction) * bar_w

    def y_at(count: float) -> float:
        return top + plot_h - count / y_max * plot_h

    parts = _svg_open(title, w, h)
    for tick in range(0, y_max + 1, y_step):
        y = y_at(tick)
        parts.append(
            f'<line x1="{left}" x2="{w - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick}</text>'
        )
    for i in range(bins):
        base = 0
        for s, (name, _) in enumerate(series):
            n = counts[s][i]
            if n:
                parts.append(
                    f'<rect x="{left + i * bar_w + 1:.1f}" y="{y_at(base + n):.1f}" '
                    f'width="{max(bar_w - 2, 1):.1f}" height="{y_at(base) - y_at(base + n):.1f}" '
                    f'fill="{SERIES_COLOURS[s % len(SERIES_COLOURS)]}">'
                    f"<title>{escape(name)}: {n}</title></rect>"
                )
                base += n
    if labels:  # named bins: the name under the middle of each column
        ticks = [(left + (i + 0.5) * bar_w, name) for i, name in enumerate(labels)]
    else:  # numeric bins: each edge's value under the edge
        every = max(1, math.ceil(bins * 5 * _CHAR_W / plot_w))
        ticks = [(left + i * bar_w, f"{edges[i]:g}") for i in range(0, len(edges), every)]
    for x, text in ticks:
        parts.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 14}" text-anchor="middle">{escape(text)}</text>'
        )
    parts.append(
        f'<line x1="{left}" x2="{w - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#6b7280"/>'
        f'<text x="{left + plot_w / 2:.0f}" y="{top + plot_h + 32}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    for k, (value, label) in enumerate(lines):
        y = 34 + 14 * k  # each line's label on its own row above the plot
        parts.append(_target_line(x_at(value), y, top + plot_h, value, label, y + 10))
    legend_x = float(left)
    for s, (name, values) in enumerate(series):
        text = f"{name} ({len(values)})"
        parts.append(
            f'<rect x="{legend_x:.0f}" y="{h - 16}" width="10" height="10" '
            f'fill="{SERIES_COLOURS[s % len(SERIES_COLOURS)]}"/>'
            f'<text x="{legend_x + 14:.0f}" y="{h - 7}">{escape(text)}</text>'
        )
        legend_x += 30 + _CHAR_W * len(text)
    parts.append("</svg>")
    return "".join(parts)


def share_bars_svg(
    title: str,
    bars: Sequence[tuple[str, float | None, int]],
    *,
    line: tuple[float, str] | None = None,
) -> str:
    """Horizontal bars of a share (0 to 1) per label, with `n` beside each and a target line."""
    row_h, top = 24, 48
    left = int(min(300, max(80, 12 + _CHAR_W * max((len(b[0]) for b in bars), default=8))))
    right, w = 110, 760
    h = top + row_h * max(len(bars), 1) + 26
    plot_w = w - left - right

    def x_at(value: float) -> float:
        return left + value * plot_w

    parts = _svg_open(title, w, h)
    for tick in range(0, 101, 20):
        px = x_at(tick / 100)
        parts.append(
            f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{top - 4}" y2="{h - 22}" stroke="#e5e7eb"/>'
            f'<text x="{px:.1f}" y="{h - 8}" text-anchor="middle">{tick}%</text>'
        )
    if not bars:
        parts.append(f'<text x="{left + 4}" y="{top + 16}">no data in the window</text>')
    for i, (label, value, n) in enumerate(bars):
        y = top + i * row_h
        parts.append(f'<text x="{left - 6}" y="{y + 16}" text-anchor="end">{escape(label)}</text>')
        if value is None:
            parts.append(f'<text x="{left + 4}" y="{y + 16}">no data</text>')
            continue
        below = line is not None and value < line[0]
        parts.append(
            f'<rect x="{left}" y="{y + 4}" width="{value * plot_w:.1f}" height="{row_h - 8}" '
            f'fill="{TARGET_COLOUR if below else SERIES_COLOURS[2]}">'
            f"<title>{escape(label)}: {value:.1%} of {n}</title></rect>"
            f'<text x="{x_at(1) + 8:.1f}" y="{y + 16}">{value:.1%} of {n}</text>'
        )
    if line is not None:
        parts.append(_target_line(x_at(line[0]), top - 18, h - 22, line[0], line[1], top - 8))
    parts.append("</svg>")
    return "".join(parts)


_TURNAROUND_EDGES = (0.0, 1, 4, 8, 24, 48, 72, 120, 240)
_TURNAROUND_LABELS = (
    "<1 h",
    "1-4 h",
    "4-8 h",
    "8-24 h",
    "1-2 d",
    "2-3 d",
    "3-5 d",
    "5-10 d",
    "10 d+",
)
_MARGIN_EDGES = (-72.0, -24, -8, -1, 0, 1, 8, 24, 72)
_MARGIN_LABELS = (
    "1 d+ early",
    "8-24 h early",
    "1-8 h early",
    "<1 h early",
    "<1 h late",
    "1-8 h late",
    "8-24 h late",
    "1-3 d late",
    "3 d+ late",
)


def _wait_chart(audit: Audit) -> str:
    waits = audit.waits
    longest = max((s.wait_days for s in waits), default=0.0)
    last = min(42, max(21, math.ceil(longest)))
    series = [
        (priority, [s.wait_days for s in waits if s.priority == priority])
        for priority in sorted({s.priority for s in waits})
    ] or [("no appointments", [])]
    t = audit.targets
    lines: list[tuple[float, str]] = []
    if t.wait_days_routine_desirable == t.wait_days_urgent:
        lines.append(
            (t.wait_days_urgent, f"{t.wait_days_urgent} days: urgent maximum, routine desirable")
        )
    else:
        lines.append((t.wait_days_urgent, f"{t.wait_days_urgent} days: urgent maximum"))
        lines.append(
            (
                t.wait_days_routine_desirable,
                f"{t.wait_days_routine_desirable} days: routine desirable",
            )
        )
    lines.append(
        (
            t.wait_days_routine_acceptable,
            f"{t.wait_days_routine_acceptable} days: routine acceptable",
        )
    )
    return histogram_svg(
        "Wait from referral to appointment",
        "days from referral received to appointment, less patient-elected delay (bins of 1 day)",
        series,
        edges=[float(d) for d in range(last + 1)],
        lines=lines,
    )


def _turnaround_charts(audit: Audit) -> list[str]:
    samples = audit.turnaround
    rules = sorted({s.rule for s in samples})
    hours = histogram_svg(
        "Report turnaround: examination completed to final report",
        "time from examination completed to final report issued",
        [(rule, [s.hours for s in samples if s.rule == rule]) for rule in rules]
        or [("no reports", [])],
        edges=_TURNAROUND_EDGES,
        labels=_TURNAROUND_LABELS,
        lines=[(1.0, "1 hour: urgent target")],
    )
    margin = histogram_svg(
        "Final report issued against its own deadline (due_at)",
        "left of the line: on time; right of it: late",
        [(rule, [s.margin_hours for s in samples if s.rule == rule]) for rule in rules]
        or [("no reports", [])],
        edges=_MARGIN_EDGES,
        labels=_MARGIN_LABELS,
        lines=[(0.0, "deadline")],
    )
    return [hours, margin]


def _provider_label(audit: Audit, code: Cell) -> str:
    name = audit.provider_names.get(str(code))
    return f"{code} {name}" if name and name != code else str(code)


def _share_by_provider(
    audit: Audit, table: str, n_columns: Sequence[str]
) -> list[tuple[str, float | None, int]]:
    """(provider, share within target, how many) from the table's per-provider rows."""
    rows = []
    for record in audit.tables[table].records():
        named = [d for d in audit.tables[table].dimensions if record[d] != ALL]
        if named != ["provider"]:
            continue
        n = sum(int(record[c] or 0) for c in n_columns)
        value = record["share_within_target"]
        label = _provider_label(audit, record["provider"])
        rows.append((label, value if isinstance(value, float) else None, n))
    return rows


# --------------------------------------------------------------------------- HTML


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#1f2937;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:2px solid #e5e7eb;padding-bottom:.2rem}
.meta{color:#4b5563}.cards{display:flex;flex-wrap:wrap;gap:.8rem;margin:1rem 0}
.card{border:1px solid #d1d5db;border-radius:8px;padding:.6rem .9rem;min-width:150px}
.card b{display:block;font-size:1.4rem}.bad{color:#b91c1c}.good{color:#15803d}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem}
th,td{border:1px solid #e5e7eb;padding:.2rem .5rem;text-align:right}th{background:#f3f4f6}
td.dim,th.dim{text-align:left}tr.total td{font-weight:600;background:#fafafa}
svg.chart{width:100%;max-width:760px;height:auto;display:block;margin:.8rem 0}
details{margin:.4rem 0}summary{cursor:pointer;color:#1f5fa8}
.notes li{color:#92400e}
"""


def _fmt(column: str, value: Cell) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if column.startswith("share") or column.endswith("rate") or column == "utilisation":
            return f"{value:.1%}"
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return escape(str(value))


def table_html(table: Table, *, collapse_over: int = 25) -> str:
    head = "".join(
        f'<th class="{"dim" if c in table.dimensions else ""}">{escape(c.replace("_", " "))}</th>'
        for c in table.columns
    )
    body = []
    for row in table.rows:
        total = all(v == ALL for v in row[: len(table.dimensions)])
        cells = "".join(
            f'<td class="dim">{"all" if v == ALL else escape(str(v))}</td>'
            if c in table.dimensions
            else f"<td>{_fmt(c, v)}</td>"
            for c, v in zip(table.columns, row, strict=True)
        )
        body.append(f'<tr class="{"total" if total else ""}">{cells}</tr>')
    html = f'<table id="table-{table.name}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    caption = f"{escape(table.title)} ({len(table.rows)} rows; {table.name}.csv)"
    if len(table.rows) > collapse_over:
        return f"<details><summary>{caption}</summary>{html}</details>"
    return f'<p class="meta">{caption}</p>{html}'


def _card(label: str, value: str, good: bool | None = None) -> str:
    style = "" if good is None else (' class="good"' if good else ' class="bad"')
    return f'<div class="card">{escape(label)}<b{style}>{escape(value)}</b></div>'


def _total(audit: Audit, table: str) -> dict[str, Cell]:
    return audit.tables[table].row()


def _pct(value: Cell) -> str:
    return f"{value:.1%}" if isinstance(value, float) else "n/a"


def report_html(audit: Audit) -> str:
    t = audit.targets
    start = audit.window_start.astimezone(LONDON)
    end = audit.window_end.astimezone(LONDON)
    volumes = _total(audit, "volumes")
    waits = _total(audit, "waits")
    turnaround = _total(audit, "turnaround")
    dna = _total(audit, "dna")
    duplicates = _total(audit, "duplicates")
    util = _total(audit, "utilisation")
    tolerance_met = turnaround["meets_tolerance"]
    cards = [
        _card("Referrals received", str(volumes["referrals"])),
        _card("Appointments within wait target", _pct(waits["share_within_target"])),
        _card(
            f"Reports within turnaround target (tolerance {t.turnaround_tolerance:.0%})",
            _pct(turnaround["share_within_target"]),
            tolerance_met if isinstance(tolerance_met, bool) else None,
        ),
        _card("Did-not-attend rate", _pct(dna["dna_rate"])),
        _card(
            "Slot utilisation",
            _pct(util["utilisation"])
            if audit.capacity_known
            else f"{util['booked_slots']} held (no capacity data)",
        ),
        _card(
            "Duplicates prevented", f"{duplicates['prevented']} of {duplicates['flagged']} flagged"
        ),
    ]
    tables = audit.tables
    sections = [
        ("Volumes", ["volumes"], []),
        ("Slot utilisation", ["utilisation", "booked_per_day"], []),
        ("Appropriateness", ["appropriateness", "returns", "guidance"], []),
        (
            "Waits to appointment",
            ["waits", "wait_breaches"],
            [
                _wait_chart(audit),
                share_bars_svg(
                    "Appointments within wait target, per provider",
                    _share_by_provider(audit, "waits", ["appointments"]),
                ),
            ],
        ),
        (
            "Report turnaround",
            ["turnaround"],
            [
                *_turnaround_charts(audit),
                share_bars_svg(
                    f"Reports within turnaround target, per provider (tolerance {t.turnaround_tolerance:.0%})",
                    _share_by_provider(audit, "turnaround", ["reports", "open_past_deadline"]),
                    line=(t.turnaround_tolerance, f"{t.turnaround_tolerance:.0%} tolerance"),
                ),
            ],
        ),
        ("Did not attend", ["dna"], []),
        ("Delivery and acknowledgement of reports", ["delivery", "acknowledgement"], []),
        ("Duplicate imaging prevented", ["duplicates"], []),
    ]
    body = [
        "<h1>Imaging pathway: rolling audit</h1>",
        f'<p class="meta">Window: {start:%a %d %b %Y %H:%M} to {end:%a %d %b %Y %H:%M} '
        f"(Europe/London; {audit.window_days} days). Computed from {audit.events_considered} "
        f"events ({audit.events_read} read, {audit.events_unique} distinct) about "
        f"{audit.referrals_seen} referrals. Definitions: docs/audit.md.</p>",
        f'<div class="cards">{"".join(cards)}</div>',
    ]
    if audit.notes:
        body.append(
            '<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in audit.notes) + "</ul>"
        )
    for heading, names, charts in sections:
        body.append(f"<h2>{escape(heading)}</h2>")
        body.extend(charts)
        body.extend(table_html(tables[n]) for n in names if n in tables)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Imaging pathway audit to {end:%d %b %Y}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}"
        f'<p class="meta">Generated from the events alone; nothing here depends on when it was '
        f"run. Window end {escape(audit.window_end.isoformat())}.</p></body></html>\n"
    )


def write_html(audit: Audit, path: Path) -> Path:
    path.write_text(report_html(audit), "utf-8")
    return path


def write_all(audit: Audit, out: Path) -> list[Path]:
    """audit.json, report.html and one CSV per figure, in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written = [write_csv(table, out / f"{name}.csv") for name, table in audit.tables.items()]
    written.append(write_json(audit, out / "audit.json"))
    written.append(write_html(audit, out / "report.html"))
    return written


def describe_window(start: datetime, end: datetime) -> str:
    return f"{start.astimezone(LONDON):%Y-%m-%d %H:%M} to {end.astimezone(LONDON):%Y-%m-%d %H:%M} Europe/London"
