"""Pieces of the student-versus-teacher report shared by its Markdown, HTML and plots.

`report.py` builds the report and imports `report_html.py` and `report_plots.py`; those
take what they share with it from here, so no module of the three imports another in a
cycle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill import stats

_TERMS_SKIP = {
    "step",
    "epoch",
    "time",
    "elapsed",
    "samples",
    "tokens",
    "stage",
    "grad_norm_clipped",
}


def fmt(v: float | None, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:,.1f}"
    return f"{v:.{digits}g}"


def comparison_cells(c: dict) -> list[str]:
    """Table cells of one comparison: metric, run, values, diff, CI, verdict, gap closed."""
    ci = c["note"].split(" (")[0] if c["lo"] is None else stats.format_ci(c, 3)
    return [c["label"], c["better"], c["run"], fmt(c["value"]), fmt(c["baseline_value"]),
            "n/a" if c["diff"] is None else f"{c['diff']:+.4g}", ci, c["verdict"] or "no verdict",
            fmt(c["gap_closed"], 3)]  # fmt: skip


COMPARISON_HEAD = ["metric", "better", "run", "run value", "CE-only", "diff", "CI (paired "
                   "bootstrap over test items)", "verdict", "gap closed"]  # fmt: skip


def provenance(run: Any) -> dict[str, str]:
    """Path, params, size, data, seed, decoding, hardware and versions of one run."""
    m, cfg = run.metrics, run.config if isinstance(run.config, dict) else {}
    model = m.get("model") or {}
    data = cfg.get("data") or m.get("data")
    out = {
        "path": str(run.path),
        "model": model.get("name", "?"),
        "params total / trainable": (
            f"{model.get('params_total', 'n/a')} / {model.get('params_trainable', 'n/a')}"
        ),
        "size on disk (bytes)": str(model.get("size_on_disk_bytes", "n/a")),
        "seed": str(cfg.get("seed", "n/a")),
        "loss": str((cfg.get("loss") or {}).get("_component_", "n/a"))
        if isinstance(cfg.get("loss"), dict)
        else "n/a",
        "data": json.dumps(data, default=str) if data else "n/a",
        "test file": str(m.get("test_file", "n/a")),
        "precision": _precision(model),
        "decoding": json.dumps(m.get("decoding")) if m.get("decoding") else "n/a",
        "hardware": json.dumps(m.get("hardware")) if m.get("hardware") else "n/a",
        "versions": json.dumps(m.get("versions")) if m.get("versions") else "n/a",
        "train log": f"{len(run.train_log)} entries" if run.train_log else "none",
    }
    return out


def _precision(model: dict) -> str:
    """The run's precision setting and the dtype its weights were measured in."""
    from distill.modeling.precision import FROM_DTYPE

    cfg = model.get("config") or {}
    setting = cfg.get("precision") or FROM_DTYPE.get(cfg.get("dtype"), "n/a")
    return f"{setting} (weights measured in {model.get('dtype', 'n/a')})"


def loss_terms(log: list[dict]) -> list[str]:
    """Numeric keys of a training log other than step counters, in first-seen order."""
    terms: dict[str, None] = {}
    for row in log:
        for k, v in row.items():
            timing = k.endswith(("_per_s", "_time", "_s"))  # throughput, not a loss term
            if (
                k not in _TERMS_SKIP
                and not timing
                and isinstance(v, (int, float))
                and not isinstance(v, bool)
            ):
                terms.setdefault(k, None)
    return list(terms)


PSEUDO_HEAD = ["run", "pseudo-label manifest", "clips", "kept", "dropped: empty",
               "dropped: WER > max", "dropped: log-prob < min", "max WER", "min log-prob"]  # fmt: skip


def pseudo_label_rows(runs: list) -> list[list[str]]:
    """What the pseudo-label filter kept and dropped for each run's train manifests.

    A train manifest written by `distill cache --pseudo-labels` (or the demo) has its
    `<stem>.stats.json` beside it; runs without one show nothing.
    """
    rows = []
    for r in runs:
        cfg = r.config if isinstance(r.config, dict) else {}
        for manifest in (cfg.get("data") or {}).get("train") or []:
            path = Path(manifest)
            if not path.is_absolute() and not path.exists():
                path = Path(r.path) / path
            stats_file = path.with_suffix(".stats.json")
            if not stats_file.is_file():
                continue
            st = json.loads(stats_file.read_text())
            rows.append([r.name, path.name, str(st.get("items", "?")), str(st.get("kept", "?")),
                         str(st.get("dropped_empty", 0)), str(st.get("dropped_wer", 0)),
                         str(st.get("dropped_logprob", 0)), fmt(st.get("max_wer")),
                         fmt(st.get("min_logprob"))])  # fmt: skip
    return rows
