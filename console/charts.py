"""Charts for the admin's pages, drawn on the server as inline SVG.

No chart library and no script: the admin pages work offline and under a strict
Content-Security-Policy, and a chart is just markup the template includes. Every text
that reaches a chart (tenant slugs, targets of calls, which blocks choose) is escaped.
Colours use CSS variables of the admin's theme where they exist, so charts follow its
light and dark modes; hovering a bar shows its exact figure (an SVG <title>).
"""

from django.utils.html import escape
from django.utils.safestring import mark_safe

# Distinct colours for series (tenants), chosen to stay apart for colour-blind readers
# (Okabe-Ito, then Tableau's darker tones).
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#7f7f7f",
           "#4e79a7", "#b07aa1", "#9c755f", "#76b7b2"]
OTHERS_COLOUR = "#b0b0b0"
OUTCOME_COLOURS = {"succeeded": "#2e7d32", "failed": "#c62828", "timed_out": "#ef6c00", "killed": "#6d4c41",
                   "running": "#1565c0", "queued": "#9e9e9e", "allowed": "#2e7d32", "denied": "#c62828"}
FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif"


def _fmt(value):
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def nice_scale(value, lines=4):
    """The top of a value axis at least `value` and its step: a round whole step (1, 2,
    2.5 or 5 times a power of ten: charts count things) giving about `lines` grid lines."""
    if value <= 0:
        return 1, 1
    raw = value / lines
    magnitude = 10 ** (len(str(int(raw))) - 1) if raw >= 1 else 1
    step = next(int(m * magnitude) for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw and float(m * magnitude).is_integer())
    top = step * -(-value // step)
    return top, step


def human_bytes(n):
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def human_ms(ms):
    if ms is None:
        return "-"
    if ms < 1:
        return f"{ms * 1000:.0f} µs"
    if ms < 1000:
        return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"
    return f"{ms / 1000:.2f} s"


def legend(series_colours):
    """An HTML legend (it wraps better than SVG text)."""
    items = "".join(
        f'<span class="chart-key"><i style="background:{colour}"></i>{escape(name)}</span>'
        for name, colour in series_colours
    )
    return mark_safe(f'<div class="chart-legend">{items}</div>')


def stacked_bars(labels, series, *, ticks=None, colours=None, width=560, height=220, empty="Nothing in this period.", unit=""):
    """Vertical bars, one per label (a time bucket), each stacked from `series`
    ({name: [value per label]}). `ticks` are the texts under the bars ('' for none;
    by default every few labels). Returns {"svg": ..., "legend": ...}."""
    names = list(series)
    colours = colours or {}
    colour_of = {name: colours.get(name, PALETTE[i % len(PALETTE)]) for i, name in enumerate(names)}
    totals = [sum(series[name][i] for name in names) for i in range(len(labels))]
    if not labels or not any(totals):
        return {"svg": mark_safe(f'<div class="chart-empty">{escape(empty)}</div>'), "legend": ""}
    left, right, top, bottom = 40, 6, 10, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    top_value, step = nice_scale(max(totals))
    slot = plot_w / len(labels)
    bar_w = max(1.0, slot * 0.78)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" preserveAspectRatio="xMidYMid meet" style="{FONT}">']
    for i in range(int(top_value // step) + 1):  # grid lines and the value axis
        value = step * i
        y = top + plot_h - plot_h * value / top_value
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_fmt(value)}</text>')
    if ticks is None:
        every = max(1, round(len(labels) / 8))
        ticks = [label if i % every == 0 else "" for i, label in enumerate(labels)]
    for i, label in enumerate(labels):
        x = left + slot * i + (slot - bar_w) / 2
        y = top + plot_h
        for name in names:
            value = series[name][i]
            if not value:
                continue
            h = plot_h * value / top_value
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{max(h, 0.5):.1f}" fill="{colour_of[name]}">'
                f'<title>{escape(label)} · {escape(name)}: {_fmt(value)}{escape(unit)}</title></rect>'
            )
        if ticks[i]:
            parts.append(f'<text x="{left + slot * i + slot / 2:.1f}" y="{height - 10}" text-anchor="middle" class="tick">{escape(ticks[i])}</text>')
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" class="axis"/>')
    parts.append("</svg>")
    return {"svg": mark_safe("".join(parts)), "legend": legend(list(colour_of.items())) if len(names) > 1 else ""}


def horizontal_bars(items, *, formatter=_fmt, empty="Nothing in this period."):
    """One bar per item: dicts with label, value, and optional detail and colour."""
    if not items or not any(item["value"] for item in items):
        return mark_safe(f'<div class="chart-empty">{escape(empty)}</div>')
    label_w, width = 250, 560
    # A label longer than a line of the label column takes two lines (a call's tenant and
    # operation, then its target) rather than being cut; only a label longer than two
    # lines is shortened, and its tooltip has all of it.
    lines = [label_lines(str(item["label"])) for item in items]
    row = 38 if any(len(two) > 1 for two in lines) else 26
    height = row * len(items) + 6
    top_value = max(item["value"] for item in items) or 1
    bar_space = width - label_w - 70
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" style="{FONT}">']
    for i, item in enumerate(items):
        y = 4 + i * row
        w = max(1.5, bar_space * item["value"] / top_value)
        label = str(item["label"])
        colour = item.get("colour") or PALETTE[0]
        title = escape(f"{label}: {formatter(item['value'])}" + (f" · {item['detail']}" if item.get("detail") else ""))
        middle = y + row / 2 + 4
        if len(lines[i]) == 1:
            text = escape(lines[i][0])
            parts.append(f'<text x="{label_w - 8}" y="{middle:.1f}" text-anchor="end" class="label"><title>{title}</title>{text}</text>')
        else:
            first, second = (escape(line) for line in lines[i])
            parts.append(f'<text x="{label_w - 8}" y="{middle - 7:.1f}" text-anchor="end" class="label"><title>{title}</title>'
                         f'<tspan x="{label_w - 8}">{first}</tspan><tspan x="{label_w - 8}" dy="14" class="tick">{second}</tspan></text>')
        parts.append(f'<rect x="{label_w}" y="{middle - 12:.1f}" width="{w:.1f}" height="17" rx="2" fill="{colour}"><title>{title}</title></rect>')
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{middle:.1f}" class="value">{escape(formatter(item["value"]))}</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))


LABEL_LINE = 38  # characters of a label line that fit the 250-unit label column


def label_lines(label):
    """A label as one line, or two broken at the last space that fits."""
    if len(label) <= LABEL_LINE:
        return [label]
    cut = label.rfind(" ", 0, LABEL_LINE + 1)
    first, second = (label[:cut], label[cut + 1:]) if cut > 0 else (label[:LABEL_LINE], label[LABEL_LINE:])
    if len(second) > LABEL_LINE:
        second = second[: LABEL_LINE - 1] + "…"
    return [first, second]


def meter(used, total, *, label=""):
    """A horizontal gauge of used against total (storage against quota)."""
    fraction = (used / total) if total else 1.0
    percent = min(100.0, fraction * 100)
    colour = "#2e7d32" if fraction < 0.8 else "#ef6c00" if fraction < 1 else "#c62828"
    text = f"{human_bytes(used)} of {human_bytes(total)} ({fraction * 100:.1f}%)"
    return mark_safe(
        f'<div class="meter" title="{escape(text)}"><div class="meter-fill" style="width:{percent:.2f}%;background:{colour}"></div></div>'
        f'<div class="meter-text">{escape(label)} {escape(text)}</div>'
    )
