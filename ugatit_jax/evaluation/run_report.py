"""One HTML page that shows how a run went, without TensorBoard: written by the trainer at the end of every run
(``RUN/report.html``) and by ``python -m ugatit_jax.report``.

The page holds the evaluation numbers over steps, each beside the untranslated input's (a plot per measure and a
table), the loss curves from ``RUN/metrics.jsonl``, and the latest sample strips from ``RUN/samples``. Plots are
inline SVG drawn here: no plotting dependency, crisp at any zoom, and the page's only links are relative ones to the
strips, so the run folder can be moved, zipped or served as it is.
"""

from __future__ import annotations

import html
import math
import os
import urllib.parse

from ugatit_jax import run_dir
from ugatit_jax.directions import DIRECTIONS, label
from ugatit_jax.evaluation.measures import MEASURES, key

COLOURS = dict(zip(DIRECTIONS, ("#1f77b4", "#d62728")))  # a plot colour per direction


# ----------------------------------------------------------------------------
# Reading the run folder
# ----------------------------------------------------------------------------


def latest_strips(workdir: str) -> tuple[int | None, list[tuple[str, str]]]:
    """(step, [(path relative to the run folder, caption)]) of the newest sample strips."""
    found = {}
    for step, split, direction, path in run_dir.sample_files(workdir):
        found.setdefault(step, []).append((split, direction, path))
    if not found:
        return None, []
    step = max(found)
    order = {"test": 0, "train": 1}
    strips = sorted(found[step], key=lambda t: (order[t[0]], t[1]))
    return step, [
        (os.path.relpath(p, workdir).replace(os.sep, "/"), f"{split}: {label(d, ' → ')}") for split, d, p in strips
    ]


# ----------------------------------------------------------------------------
# Inline SVG line plots
# ----------------------------------------------------------------------------


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 2.5 or 5 times a power of ten apart)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    value = first
    while value <= hi + 1e-9 * step:
        ticks.append(0.0 if abs(value) < 1e-12 * step else value)
        value += step
    return ticks


def _label(value: float) -> str:
    return f"{value:.4g}"


def svg_plot(series: list[dict], title: str, *, width: int = 440, height: int = 250, note: str = "") -> str:
    """An inline SVG line plot. Each series: ``{'label', 'x': [...], 'y': [...], 'colour', 'dashed'}``; points
    whose y is None or not finite are left out. A series with one point is drawn as a dot."""
    pts = [
        [(float(x), float(y)) for x, y in zip(s["x"], s["y"]) if y is not None and math.isfinite(float(y))]
        for s in series
    ]
    xs = [x for p in pts for x, _ in p]
    ys = [y for p in pts for _, y in p]
    left, right, top, bottom = 58, 12, 40 if note else 28, 40 + 16 * ((len(series) + 1) // 2)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + bottom - 40}" '
        f'viewBox="0 0 {width} {height + bottom - 40}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{left}" y="16" font-size="12" font-weight="bold">{html.escape(title)}</text>',
    ]
    plot_w, plot_h = width - left - right, height - top - 40
    if not xs:
        out.append(f'<text x="{left}" y="{top + plot_h / 2}" font-size="11" fill="#777">no data yet</text></svg>')
        return "\n".join(out)
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        pad = abs(y0) * 0.1 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad
    sx = lambda x: left + (x - x0) / (x1 - x0) * plot_w
    sy = lambda y: top + (1 - (y - y0) / (y1 - y0)) * plot_h
    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#999"/>')
    for t in _nice_ticks(y0, y1):
        y = sy(t)
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{_label(t)}</text>')
    for t in _nice_ticks(x0, x1):
        x = sx(t)
        out.append(f'<text x="{x:.1f}" y="{top + plot_h + 14}" font-size="10" text-anchor="middle">{_label(t)}</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 28}" font-size="10" text-anchor="middle">step</text>')
    for s, p in zip(series, pts):
        colour, dash = s.get("colour", "#333"), ' stroke-dasharray="5,4"' if s.get("dashed") else ""
        if len(p) == 1:
            out.append(f'<circle cx="{sx(p[0][0]):.1f}" cy="{sy(p[0][1]):.1f}" r="3" fill="{colour}"/>')
        elif p:
            points = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in p)
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6"{dash} points="{points}"/>')
    for i, s in enumerate(series):
        lx, ly = left + (i % 2) * (plot_w / 2), top + plot_h + 44 + 16 * (i // 2)
        colour, dash = s.get("colour", "#333"), ' stroke-dasharray="5,4"' if s.get("dashed") else ""
        out.append(
            f'<line x1="{lx}" x2="{lx + 22}" y1="{ly - 4}" y2="{ly - 4}" stroke="{colour}" stroke-width="2"{dash}/>'
        )
        out.append(f'<text x="{lx + 27}" y="{ly}" font-size="10">{html.escape(s["label"])}</text>')
    if note:
        out.append(f'<text x="{left}" y="30" font-size="10" fill="#777">{html.escape(note)}</text>')
    out.append("</svg>")
    return "\n".join(out)


# ----------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------


def evaluation_plots(records: list[dict]) -> dict[str, str]:
    """One SVG plot per evaluation measure the records hold (measure name -> SVG), each direction beside its
    untranslated input."""
    plots = {}
    steps = [r["step"] for r in records]
    for measure in MEASURES:
        name, series = measure.name, []
        for d in DIRECTIONS:
            ours = [r["scores"].get(key(d, name)) for r in records]
            base = [r["scores"].get(key(d, name + "_input")) for r in records]
            if any(v is not None for v in ours):
                series.append({"label": f"{label(d)} translation", "x": steps, "y": ours, "colour": COLOURS[d]})
            if any(v is not None for v in base):
                series.append(
                    {
                        "label": f"{label(d)} untranslated input",
                        "x": steps,
                        "y": base,
                        "colour": COLOURS[d],
                        "dashed": True,
                    }
                )
        if series:
            plots[name] = svg_plot(series, measure.heading, note=measure.better)
    return plots


def _cell(value) -> str:
    return "–" if value is None else f"{value:.4g}"


def _eval_table(records: list[dict]) -> str:
    """One table per direction: a column per measure, the untranslated input's row first (it does not change
    between steps), then a row per evaluated step. Narrow enough for a laptop screen however many steps there are."""
    names = [m.name for m in MEASURES if any(key(d, m.name) in r["scores"] for r in records for d in DIRECTIONS)]
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    tables = []
    for d in DIRECTIONS:
        latest = records[-1]["scores"]
        base = "".join(f'<td class="base">{_cell(latest.get(key(d, n + "_input")))}</td>' for n in names)
        rows = [f'<tr><td class="base">input</td>{base}</tr>']
        for r in records:
            cells = "".join(f"<td>{_cell(r['scores'].get(key(d, n)))}</td>" for n in names)
            rows.append(f"<tr><td>{r['step']}</td>{cells}</tr>")
        tables.append(
            f'<div class="scroll"><table><caption>{html.escape(label(d))}</caption>'
            f"<thead><tr><th>step</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        )
    return '<div class="tables">' + "".join(tables) + "</div>"


def _loss_plots(rows: list[dict]) -> list[str]:
    keys = sorted({k for r in rows for k in r if k != "step"}, key=lambda k: ("loss" not in k, k))
    steps = [r["step"] for r in rows]
    return [svg_plot([{"label": k, "x": steps, "y": [r.get(k) for r in rows], "colour": "#333"}], k) for k in keys]


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; background: #fafafa; color: #222; max-width: 1400px; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 12px; }
.plots svg { background: #fff; border: 1px solid #ddd; width: 100%; height: auto; }
.tables { display: flex; flex-wrap: wrap; gap: 1.5em; margin-top: 1em; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 0.85em; }
caption { font-weight: bold; text-align: left; padding-bottom: 2px; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
td.base { color: #777; }
figure { margin: 0 0 1em 0; }
figure img { image-rendering: pixelated; border: 1px solid #ccc; max-width: 100%; }
.note { color: #555; max-width: 60em; }
"""


def build_report(workdir: str) -> str:
    """The page's HTML for the run in ``workdir``."""
    name = os.path.basename(os.path.abspath(workdir))
    rows, records = run_dir.read_metrics(workdir), run_dir.read_evaluations(workdir)
    strip_step, strips = latest_strips(workdir)
    last_step = max([r["step"] for r in rows] + [r["step"] for r in records] + [strip_step or 0])
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(name)}: run report</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(name)}: run report up to step {last_step}</h1>",
        '<ul><li><a href="#evaluation">Evaluation</a></li><li><a href="#losses">Training curves</a></li>'
        '<li><a href="#samples">Sample strips</a></li></ul>',
        '<h2 id="evaluation">Evaluation on the held-out test split</h2>',
    ]
    if records:
        latest = records[-1]
        acc = latest["scores"].get("eval/classifier_accuracy")
        out.append(
            '<p class="note">Solid lines: the translations; dashed: the untranslated input, the baseline a '
            "translation must beat. The domain classifier was trained on the training splits only"
            + (f"; its held-out accuracy is {acc:.1%}." if acc is not None else ".")
            + f" {latest.get('pairs', 0)} test pairs; dataset {html.escape(str(latest.get('dataset')))}.</p>"
        )
        out.append('<div class="plots">' + "\n".join(evaluation_plots(records).values()) + "</div>")
        out.append(_eval_table(records))
        notes = latest.get("notes") or []
        out += [f'<p class="note">note (step {latest["step"]}): {html.escape(str(n))}</p>' for n in notes]
    else:
        out.append('<p class="note">No evaluation yet (config.eval_every, or python -m ugatit_jax.evaluate).</p>')
    out.append('<h2 id="losses">Training curves</h2>')
    if rows:
        out.append('<div class="plots">' + "\n".join(_loss_plots(rows)) + "</div>")
    else:
        out.append(f'<p class="note">No {run_dir.METRICS} yet.</p>')
    out.append('<h2 id="samples">Sample strips</h2>')
    if strips:
        out.append(
            f'<p class="note">Step {strip_step}. Each column is one image; rows, top to bottom: input, identity heat '
            "map, identity, translation heat map, translation, cycle heat map, cycle.</p>"
        )
        for rel, caption in strips:
            link = html.escape(urllib.parse.quote(rel, safe="/"))
            out.append(
                f'<figure><figcaption>{html.escape(caption)}</figcaption><a href="{link}">'
                f'<img src="{link}" alt="{html.escape(caption)}"></a></figure>'
            )
    else:
        out.append('<p class="note">No sample strips yet.</p>')
    out.append("</body></html>\n")
    return "\n".join(out)


def write_report(workdir: str, output: str | None = None) -> str:
    """Write the page (default ``run_dir.report_file``) atomically; returns its path. Strip links are relative to
    the run folder, so a page written elsewhere links correctly only from inside the run folder."""
    output = output or run_dir.report_file(workdir)
    page = build_report(workdir)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, output)
    return output
