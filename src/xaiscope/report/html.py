"""Render a :class:`~xaiscope.report.build.Report` as one self-contained HTML page.

Every picture is an inline ``data:image/png;base64`` URI and the style sheet is inline:
the page loads nothing over the network (no scripts, fonts or CDNs) and can be mailed or
archived as one file. Every text that comes from the user or the model (file names,
labels, parameters) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xaiscope.report.build import Picture, Report

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1200px; padding: 1em 2em; color: #222; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
h3 { margin-bottom: 0.3em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left;
         vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 0.6em 0 1.2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
.prediction { display: flex; gap: 1.5em; align-items: flex-start; flex-wrap: wrap; }
.notes li { color: #8a5a00; }
code, pre { font-size: 0.85em; background: #f6f6f6; padding: 0.1em 0.3em; }
pre { padding: 0.6em; overflow-x: auto; }
nav a { margin-right: 1em; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(pic: Picture, *, alt: str | None = None) -> str:
    data = base64.b64encode(pic.png).decode("ascii")
    w, h = pic.size
    return (
        f'<figure><img src="data:image/png;base64,{data}" width="{w}" height="{h}" '
        f'alt="{_e(alt or pic.caption)}"><figcaption>{_e(pic.caption)}</figcaption></figure>'
    )


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return _e("" if value is None else value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return _e(value)
        return f"{value:.4g}"
    return _e(value)


def _table(rows: list[dict[str, Any]], *, css_class: str = "") -> str:
    if not rows:
        return ""
    columns: list[str] = []
    for r in rows:
        for k in r:
            if k not in columns:
                columns.append(k)
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            text = _num(v) if not isinstance(v, (dict, list)) else _e(json.dumps(v, default=str))
            cells.append(f'<td class="num">{text}</td>' if num else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cls = f' class="{css_class}"' if css_class else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _kv(d: dict[str, Any]) -> str:
    def text(v: Any) -> str:
        return _e(json.dumps(v, default=str) if isinstance(v, (dict, list)) else v)

    rows = "".join(
        f"<tr><th>{_e(k)}</th><td>{text(v)}</td></tr>" for k, v in d.items() if v is not None
    )
    return f"<table>{rows}</table>"


def render(report: Report) -> str:
    """The report as one HTML document (a str)."""
    p = report.provenance
    parts: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # no request of any kind leaves the page: images are data: URIs, no scripts
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">",
        f"<title>{_e(report.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(report.title)}</h1>",
        f"<p>{len(report.images)} image(s), method(s): "
        f"{_e(', '.join(r['method'] for r in report.methods))}; created {_e(p.get('created', ''))}"
        "</p>",
    ]
    sections = [("predictions", "Predictions"), ("maps", "Maps")]
    if report.metrics:
        sections.append(("metrics", "Metrics"))
    if any(s.topk for s in report.images):
        sections.append(("topk", "Top-k classes"))
    if any(s.activations for s in report.images):
        sections.append(("activations", "Activations"))
    if any(s.attention for s in report.images):
        sections.append(("attention", "Attention"))
    sections.append(("provenance", "Provenance"))
    parts.append("<nav>" + "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in sections) + "</nav>")

    parts.append('<h2 id="predictions">Predictions</h2>')
    for sec in report.images:
        rows = [
            {
                "rank": r["rank"],
                "class": r["label"],
                "index": r["index"],
                "probability": f"{r['probability']:.1%}",
            }  # fmt: skip
            for r in sec.predictions
        ]
        parts.append(
            f'<h3>{_e(sec.name)}</h3><div class="prediction">{_img(sec.thumbnail)}'
            f"{_table(rows)}</div>"
        )

    parts.append('<h2 id="maps">Maps</h2>')
    parts.append(
        "<p>Each row: the image, then one map per method over it, titled with the method, "
        "the target class, its probability and score. Maps with both signs are green "
        "(positive) and red (negative).</p>"
    )
    for sec in report.images:
        parts.append(f"<h3>{_e(sec.name)}</h3>")
        parts += [_img(pic) for pic in sec.maps]
    if report.notes:
        parts.append(
            '<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in report.notes) + "</ul>"
        )

    if report.metrics:
        parts.append('<h2 id="metrics">Metrics</h2>')
        parts.append(_table(report.metrics))

    for key, head, attr in (
        ("topk", "Top-k classes", "topk"),
        ("activations", "Activations", "activations"),
        ("attention", "Attention", "attention"),
    ):
        if not any(getattr(s, attr) for s in report.images):
            continue
        parts.append(f'<h2 id="{key}">{_e(head)}</h2>')
        if key == "activations":
            parts.append(
                "<p>Every channel of each layer, 16 per row, each scaled on its own (yellow: "
                "where that channel fires most). Early layers have few channels at high "
                "resolution, late layers many channels at low resolution.</p>"
            )
        for sec in report.images:
            pics = getattr(sec, attr)
            if pics:
                parts.append(f"<h3>{_e(sec.name)}</h3>")
                parts += [_img(pic) for pic in pics]

    parts.append('<h2 id="provenance">Provenance</h2>')
    parts.append("<h3>Model</h3>" + _kv(p.get("model", {})))
    run = {
        "target": p.get("target"),
        "layer": p.get("layer"),
        "seed": p.get("seed"),
        "images": ", ".join(p.get("images", [])),
        "created": p.get("created"),
        "total seconds": round(float(p.get("total_seconds", 0.0)), 3),
    }
    parts.append("<h3>Run</h3>" + _kv(run))
    method_rows = [
        {
            "method": r["method"],
            "parameters": r["params"],
            "layer": r.get("layer") or "",
            "target sets": r.get("targets", 1),
            "seconds": round(float(r["seconds"]), 4),
            **(
                {"metric seconds": round(float(r["metrics_seconds"]), 4)}
                if "metrics_seconds" in r
                else {}
            ),
        }
        for r in report.methods
    ]
    parts.append("<h3>Methods (parameters and run time)</h3>" + _table(method_rows))
    parts.append("<h3>Libraries</h3>" + _kv(p.get("versions", {})))
    parts.append("</body></html>")
    return "\n".join(parts)
