"""Self-contained HTML for the report: plots embedded as base64 PNG, no scripts, no network."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f2f2f2; } td.label, th.label { text-align: left; }
td.better { color: #0a7a0a; font-weight: 600; } td.worse { color: #a31515; }
td.noise { color: #777; font-style: italic; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
li { margin: 0.3em 0; }
"""


def _fmt(v) -> str:
    from distill.report_common import fmt

    return fmt(v) if isinstance(v, (int, float)) or v is None else str(v)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    img = f'<img alt="{escape(path.stem)}" src="data:image/png;base64,{data}">'
    return f"<figure>{img}<figcaption>{escape(path.name)}</figcaption></figure>"


def _ratio_class(row: dict, ratio: float | None, noise: bool | None = None) -> str:
    if noise:
        return ' class="noise"'
    if ratio is None or not row["better"]:
        return ""
    good = ratio < 1 if row["better"] == "lower" else ratio > 1
    return ' class="better"' if good else ' class="worse"'


def metrics_table(runs, rows, teacher) -> str:
    others = [r for r in runs if r is not teacher]
    head = ['<th class="label">metric</th><th>better</th>']
    if teacher is not None:
        head.append(f"<th>{escape(teacher.name)} (teacher)</th>")
    head += [f"<th>{escape(r.name)} ({escape(r.role)})</th>" for r in others]
    if teacher is not None:
        head += [f"<th>{escape(r.name)} / teacher</th>" for r in others]
    body = []
    for row in rows:
        cells = [
            f'<td class="label">{escape(row["label"])}</td><td>{escape(row["better"] or "-")}</td>'
        ]
        if teacher is not None:
            cells.append(f"<td>{_fmt(row['teacher'])}</td>")
        cells += [f"<td>{_fmt(row['values'][r.name])}</td>" for r in others]
        if teacher is not None:
            for r in others:
                q, noise = row["ratios"].get(r.name), row.get("noise", {}).get(r.name)
                text = ("n/a" if q is None else f"{q:.3f}") + (" (noise)" if noise else "")
                cells.append(f"<td{_ratio_class(row, q, noise)}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    thead = f"<thead><tr>{''.join(head)}</tr></thead>"
    return f'<table id="metrics">{thead}<tbody>{"".join(body)}</tbody></table>'


def comparisons_table(compared) -> str:
    """Distilled vs CE-only: difference, paired bootstrap CI, verdict, gap closed."""
    from distill.report_common import COMPARISON_HEAD, comparison_cells

    head = "".join(f"<th>{escape(h)}</th>" for h in COMPARISON_HEAD)
    body = "".join(
        f'<tr><td class="label">{escape(cells[0])}</td>'
        + "".join(f"<td>{escape(x)}</td>" for x in cells[1:])
        + "</tr>"
        for cells in map(comparison_cells, compared)
    )
    return f'<table id="comparisons"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _kv_table(pairs: dict, table_id: str) -> str:
    rows = "".join(
        f'<tr><td class="label">{escape(k)}</td><td class="label">{escape(str(v))}</td></tr>'
        for k, v in pairs.items()
    )
    return f'<table id="{escape(table_id)}">{rows}</table>'


def _worst(run) -> str:
    parts = []
    for task, acc in (run.metrics.get("accuracy") or {}).items():
        worst = (acc.get("worst") or [])[:5]
        if not worst:
            continue
        score = "errors" if acc.get("metric") == "wer" else "cider_d"
        rows = "".join(
            f'<tr><td class="label">{escape(str(w.get("id")))}</td><td>{_fmt(w.get(score))}</td>'
            f'<td class="label">{escape(str(w.get("hypothesis", "")))}</td>'
            f'<td class="label">{escape(str(w.get("reference", w.get("references", ""))))}</td></tr>'
            for w in worst
        )
        parts.append(
            f"<h4>Worst {escape(task)} items</h4><table><tr><th>id</th><th>{score}</th>"
            f"<th>hypothesis</th><th>reference</th></tr>{rows}</table>"
        )
    return "".join(parts)


def render_html(title, runs, rows, teacher, sentences, plots, compared=()) -> str:
    from distill.report_common import provenance

    roles = ", ".join(f"<code>{escape(r.name)}</code> ({escape(r.role)})" for r in runs)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p>Teacher: <code>{escape(teacher.name) if teacher else 'none given'}</code>. Runs: {roles}.</p>",
        '<h2>Verdict</h2><ul id="verdicts">'
        + "".join(f"<li>{escape(s)}</li>" for s in sentences)
        + "</ul>",
        *(
            [
                "<h2>Distilled vs CE-only</h2>",
                "<p>Gap closed = (CE - KD) / (CE - teacher).</p>",
                comparisons_table(compared),
            ]
            if compared
            else []
        ),
        "<h2>Metrics</h2>",
        "<p>Ratios are run / teacher; green where the run is better than the teacher; "
        "(noise): the spread of the timed repeats (p90 - p10, else std) exceeds the difference.</p>",
        metrics_table(runs, rows, teacher),
        *_pseudo_section(runs),
        '<h2>Plots</h2><div id="plots">' + "".join(_img(p) for p in plots) + "</div>",
        "<h2>Runs</h2>",
    ]
    for r in runs:
        out.append(f"<h3>{escape(r.name)} ({escape(r.role)})</h3>")
        out.append(_kv_table(provenance(r), f"run-{r.name}"))
        out.append(_worst(r))
        if r.config_text:
            out.append(
                f"<details><summary>config.yaml</summary><pre>{escape(r.config_text)}</pre></details>"
            )
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _pseudo_section(runs) -> list[str]:
    from distill.report_common import PSEUDO_HEAD, pseudo_label_rows

    rows = pseudo_label_rows(runs)
    if not rows:
        return []
    head = "".join(f"<th>{escape(h)}</th>" for h in PSEUDO_HEAD)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return ["<h2>Pseudo-labels</h2>",
            f'<table id="pseudo-labels"><tr>{head}</tr>{body}</table>']  # fmt: skip
