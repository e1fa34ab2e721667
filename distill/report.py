"""The student-versus-teacher report: Markdown, self-contained HTML, PNG plots, metrics.json.

    distill report runs/teacher runs/baseline runs/ddat --out runs/report --teacher teacher
    write_report(["runs/teacher", "runs/baseline", "runs/ddat"], "runs/report", teacher="teacher")

A run dir holds `config.yaml`, `train_log.jsonl` (one JSON object per logged step:
{"step", "loss", "<term>", "lr", ...}), `eval/metrics.json` (written by `distill eval`) and
`model/`. Any piece may be missing (a released teacher has no training log). For every metric
the report lists each run, the teacher and the run/teacher ratio, and it says in one sentence
per quality metric whether each distilled student beats, ties or loses to the CE-only baseline
student. The verdict follows the paired bootstrap 95 % CI of the difference over the test items
(`distill.stats`, from each run's eval/predictions.jsonl); without per-item scores there is no
CI and no verdict. "Gap closed" is (CE - KD) / (CE - teacher). An efficiency ratio is marked
"(noise)" when the spread of the timed repeats (p90 - p10, else std; averaged over the run and
the teacher) exceeds the difference (`is_noise`).

Roles come from metrics.json (`model.role`), else from config.yaml (no teacher -> baseline).
The teacher is `teacher=NAME` (a run dir name or model name), else the run whose role is
"teacher"; the baseline is `baseline=NAME`, else the run whose role is "baseline".
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from distill import stats
from distill.eval.io import read_jsonl
from distill.report_common import (  # noqa: F401  (re-exported)
    COMPARISON_HEAD,
    PSEUDO_HEAD,
    comparison_cells,
    loss_terms,
    provenance,
    pseudo_label_rows,
)
from distill.report_common import fmt as _fmt

# quality metrics: (task-level key, label, better, scale)
_QUALITY = {"wer": ("WER %", "lower"), "cider_d": ("CIDEr-D", "higher"),
            "spice": ("SPICE", "higher"), "spider": ("SPIDEr", "higher")}  # fmt: skip
_EFFICIENCY = {
    "ttft_s": ("TTFT s", "lower"),
    "tpot_s": ("TPOT s", "lower"),
    "inference_s": ("inference s", "lower"),
    "memory_gb": ("memory GiB", "lower"),
    "rtfx": ("RTFx", "higher"),
}


@dataclass
class Metric:
    """One reported number: `key` is unique, `label` says exactly what it is."""

    key: str
    label: str
    value: float | None
    better: str  # "lower" | "higher" | ""
    kind: str  # "quality" | "efficiency" | "size"
    unit: str = ""
    spread: float | None = None  # of the timed repeats: p90 - p10, else std (efficiency only)


@dataclass
class Run:
    name: str
    path: Path
    role: str
    metrics: dict = field(default_factory=dict)
    config: dict | None = None
    config_text: str | None = None
    train_log: list[dict] = field(default_factory=list)
    table: dict[str, Metric] = field(default_factory=dict)
    items: dict | None = None  # {task: {id: per-item scores}} from eval/predictions.jsonl
    items_note: str = ""  # why `items` is None


# ---- loading --------------------------------------------------------------------------------


def _train_log(path: Path) -> list[dict]:
    return read_jsonl(path) if path.is_file() else []


def load_run(path: str | Path) -> Run:
    """Read a run dir (or a dir that directly holds metrics.json)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run dir {path} does not exist")
    mfile = next(
        (p for p in (path / "eval" / "metrics.json", path / "metrics.json") if p.is_file()), None
    )
    metrics = json.loads(mfile.read_text()) if mfile else {}
    cfile = path / "config.yaml"
    config_text = cfile.read_text(encoding="utf-8") if cfile.is_file() else None
    config = yaml.safe_load(config_text) if config_text else None
    model = metrics.get("model", {})
    role = model.get("role") or (
        "baseline"
        if isinstance(config, dict) and config.get("teacher") is None and "loss" in config
        else "student"
    )
    run = Run(
        path.name,
        path,
        role,
        metrics,
        config,
        config_text,
        _train_log(path / "train_log.jsonl"),
    )
    run.table = flatten_metrics(metrics)
    try:
        run.items = stats.load_item_scores(mfile.parent if mfile else path)
    except (FileNotFoundError, stats.MissingItemScores) as err:
        run.items_note = str(err)
    return run


def _spread(eff: dict, name: str) -> float | None:
    lo, hi = eff.get(f"{name}_p10"), eff.get(f"{name}_p90")
    return hi - lo if lo is not None and hi is not None else eff.get(f"{name}_std")


def flatten_metrics(metrics: dict) -> dict[str, Metric]:
    """metrics.json -> {key: Metric}: quality per task, efficiency per protocol, sizes."""
    out: dict[str, Metric] = {}
    for task, acc in (metrics.get("accuracy") or {}).items():
        if acc.get("metric") == "wer":
            out[f"{task}/wer"] = Metric(
                f"{task}/wer", f"{task}: WER %", acc.get("wer_percent"), "lower", "quality", "%"
            )
        for name in acc.get("metrics") or []:
            label, better = _QUALITY.get(name, (name, "higher"))
            out[f"{task}/{name}"] = Metric(
                f"{task}/{name}", f"{task}: {label}", acc.get(name), better, "quality"
            )
        if acc.get("field_cider_d_x100") is not None:
            out[f"{task}/field_cider_d_x100"] = Metric(
                f"{task}/field_cider_d_x100",
                f"{task}: CIDEr-D x100, untokenized, 1 ref (the field's 'SPIDEr' label)",
                acc["field_cider_d_x100"], "higher", "quality-field",
            )  # fmt: skip
    for proto, eff in (metrics.get("efficiency") or {}).items():
        for name, (label, better) in _EFFICIENCY.items():
            if eff.get(name) is None:
                continue
            if name == "memory_gb":
                label = f"memory GiB ({eff.get('memory_kind', '?')})"
            stat = " median" if proto != "baseline" and name.endswith("_s") else ""
            out[f"{proto}/{name}"] = Metric(
                f"{proto}/{name}", f"[{proto}] {label}{stat}", eff[name], better, "efficiency",
                spread=_spread(eff, name),
            )  # fmt: skip
    model = metrics.get("model") or {}
    for key, label in (
        ("params_total", "params total (M)"),
        ("params_trainable", "params trainable (M)"),
    ):
        if model.get(key) is not None:
            out[key] = Metric(key, label, model[key] / 1e6, "", "size", "M")
    if model.get("size_on_disk_bytes") is not None:
        out["size_on_disk"] = Metric(
            "size_on_disk", "size on disk (MB)", model["size_on_disk_bytes"] / 1e6, "", "size", "MB"
        )
    return out


def _find(runs: list[Run], name: str | None, role: str) -> Run | None:
    if name is not None:
        for r in runs:
            if name in (r.name, r.metrics.get("model", {}).get("name")):
                return r
        raise ValueError(f"no run named {name!r}; runs: {[r.name for r in runs]}")
    return next((r for r in runs if r.role == role), None)


def _unique_names(runs: list[Run]) -> None:
    seen: dict[str, int] = {}
    for r in runs:
        if r.name in seen:
            r.name = f"{r.path.parent.name}/{r.name}"
        seen[r.name] = 1


# ---- comparison -----------------------------------------------------------------------------


def ratio(value: float | None, ref: float | None) -> float | None:
    if (
        value is None
        or ref is None
        or not math.isfinite(value)
        or not math.isfinite(ref)
        or ref == 0
    ):
        return None
    return value / ref


def is_noise(run: Metric | None, teacher: Metric | None) -> bool | None:
    """True when the spread of the repeats (p90 - p10, else std; the mean of the two runs'
    spreads, or the one stored) reaches |run - teacher|: for symmetric repeats, their p10-p90
    ranges overlap. None when neither stores a spread or a value is missing."""
    if run is None or teacher is None or run.value is None or teacher.value is None:
        return None
    spreads = [m.spread for m in (run, teacher) if m.spread is not None]
    return sum(spreads) / len(spreads) >= abs(run.value - teacher.value) if spreads else None


def metric_rows(runs: list[Run], teacher: Run | None) -> list[dict]:
    """One row per metric key (in first-seen order): values per run, teacher, ratios, and
    for efficiency metrics whether each ratio is within the noise of the repeats."""
    keys: dict[str, Metric] = {}
    for r in runs:
        for k, m in r.table.items():
            keys.setdefault(k, m)
    rows = []
    for k, m in keys.items():
        values = {r.name: (r.table[k].value if k in r.table else None) for r in runs}
        t = values.get(teacher.name) if teacher else None
        rows.append({
            "key": k, "label": m.label, "better": m.better, "kind": m.kind, "values": values,
            "teacher": t,
            "ratios": {r.name: ratio(values[r.name], t) for r in runs if teacher is None or r is not teacher},
            "noise": {r.name: is_noise(r.table.get(k), teacher.table.get(k)) for r in runs
                      if r is not teacher} if teacher and m.kind == "efficiency" else {},
        })  # fmt: skip
    return rows


def _compare(row: dict, s: Run, baseline: Run, teacher: Run | None) -> dict:
    """One distilled-vs-CE-only comparison on one quality metric: CI, verdict, gap closed."""
    task, name = row["key"].rsplit("/", 1)
    v, b = row["values"].get(s.name), row["values"].get(baseline.name)
    t = row["teacher"] if teacher is not None else None
    out = {"metric": row["key"], "label": row["label"], "better": row["better"], "run": s.name,
           "baseline": baseline.name, "value": v, "baseline_value": b, "teacher_value": t,
           "diff": None if v is None or b is None else v - b, "lo": None, "hi": None,
           "verdict": None, "gap_closed": stats.gap_closed(b, v, t), "n_items": None, "note": ""}  # fmt: skip
    missing = [r for r in (baseline, s) if r.items is None or task not in r.items]
    if missing:
        why = missing[0].items_note or f"no per-item {task} scores"
        out["note"] = f"no per-item scores: no CI (`{missing[0].name}`: {why})"
        return out
    try:
        out.update(stats.compare_items(baseline.items[task], s.items[task], name))
    except (KeyError, ValueError) as err:  # different test sets, a metric missing per item
        out["note"] = f"no CI ({err})"
    return out


def comparisons(
    runs: list[Run], baseline: Run | None, teacher: Run | None, rows: list[dict]
) -> list[dict]:
    """Every (distilled run, quality metric with per-item scores) against the CE-only run."""
    if baseline is None:
        return []
    students = [r for r in runs if r.role not in ("teacher", "baseline") and r is not baseline]
    quality = [
        r for r in rows if r["kind"] == "quality" and r["key"].rsplit("/", 1)[1] in stats.METRICS
    ]
    return [_compare(row, s, baseline, teacher) for row in quality for s in students]


_VERB = {"beats": "beats", "ties": "ties", "loses": "loses to"}


def verdicts(runs: list[Run], baseline: Run | None, compared: list[dict]) -> list[str]:
    """One sentence per comparison with the numbers, the CI and the gap closed."""
    students = [r for r in runs if r.role not in ("teacher", "baseline") and r is not baseline]
    if baseline is None:
        return [
            "No CE-only baseline run (role 'baseline') was given, so no distilled-vs-baseline verdict."
        ]
    if not students:
        return [
            f"Only the baseline student `{baseline.name}` was given; no distilled student to compare."
        ]
    out = []
    for c in compared:
        who = f"`{c['run']}` ({_fmt(c['value'])})"
        base = f"the CE-only baseline `{c['baseline']}` ({_fmt(c['baseline_value'])})"
        if c["diff"] is None:
            out.append(f"{c['label']}: cannot compare {who} with {base} (missing value).")
            continue
        gap = "" if c["gap_closed"] is None else f"; gap closed {c['gap_closed']:.2f}"
        if c["verdict"] is None:
            out.append(
                f"{c['label']}: distilled {who} vs {base}: difference {c['diff']:+.4g} "
                f"({c['better']} is better){gap}; {c['note']}, so no verdict."
            )
            continue
        out.append(
            f"{c['label']}: distilled {who} {_VERB[c['verdict']]} {base}; difference "
            f"{c['diff']:+.4g}, {stats.format_ci(c, 4)} (paired bootstrap over {c['n_items']} "
            f"test items; {c['better']} is better){gap}."
        )
    return out


# ---- writing --------------------------------------------------------------------------------


def write_report(
    run_dirs: list[str | Path],
    out_dir: str | Path,
    *,
    teacher: str | None = None,
    baseline: str | None = None,
    title: str = "Student versus teacher",
) -> Path:
    """Write report.md, report.html, metrics.json and PNG plots into `out_dir`; returns it."""
    from distill.report_html import render_html
    from distill.report_plots import make_plots

    if not run_dirs:
        raise ValueError("write_report needs at least one run dir")
    runs = [load_run(p) for p in run_dirs]
    _unique_names(runs)
    t_run = _find(runs, teacher, "teacher")
    if t_run is not None:
        t_run.role = "teacher"
    b_run = _find(runs, baseline, "baseline")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = metric_rows(runs, t_run)
    compared = comparisons(runs, b_run, t_run, rows)
    sentences = verdicts(runs, b_run, compared)
    plots = make_plots(runs, rows, t_run, out)
    summary = {
        "title": title,
        "teacher": t_run.name if t_run else None,
        "baseline": b_run.name if b_run else None,
        "runs": [
            {
                "name": r.name,
                "role": r.role,
                "path": str(r.path),
                "metrics": {k: m.value for k, m in r.table.items()},
            }
            for r in runs
        ],  # fmt: skip
        "rows": rows,
        "verdicts": sentences,
        "comparisons": compared,
        "plots": [p.name for p in plots],
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "report.md").write_text(
        render_markdown(title, runs, rows, t_run, sentences, plots, compared), encoding="utf-8"
    )
    (out / "report.html").write_text(
        render_html(title, runs, rows, t_run, sentences, plots, compared), encoding="utf-8"
    )
    return out


def _ratio_cell(row: dict, name: str) -> str:
    cell = _fmt(row["ratios"].get(name), 3)
    return cell + " (noise)" if row.get("noise", {}).get(name) else cell


def render_markdown(title, runs, rows, teacher, sentences, plots, compared=()) -> str:
    others = [r for r in runs if r is not teacher]
    head = ["metric", "better"] + ([f"{teacher.name} (teacher)"] if teacher else [])
    head += [r.name for r in others] + ([f"{r.name}/teacher" for r in others] if teacher else [])
    lines = [f"# {title}", "", f"Teacher: `{teacher.name if teacher else 'none given'}`. "
             f"Runs: {', '.join(f'`{r.name}` ({r.role})' for r in runs)}.", "", "## Verdict", ""]  # fmt: skip
    lines += [f"- {s}" for s in sentences] + [""]
    if compared:
        lines += ["## Distilled vs CE-only", "", "Gap closed = (CE - KD) / (CE - teacher).", ""]
        lines += ["| " + " | ".join(COMPARISON_HEAD) + " |", "|" + "---|" * len(COMPARISON_HEAD)]
        lines += ["| " + " | ".join(comparison_cells(c)) + " |" for c in compared] + [""]
    lines += ["## Metrics", "", "Ratios are run / teacher; (noise): the spread of the timed "
              "repeats (p90 - p10, else std) exceeds the difference.", ""]  # fmt: skip
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["label"], row["better"] or "-"] + ([_fmt(row["teacher"])] if teacher else [])
        cells += [_fmt(row["values"][r.name]) for r in others]
        cells += [_ratio_cell(row, r.name) for r in others] if teacher else []
        lines.append("| " + " | ".join(cells) + " |")
    pseudo = pseudo_label_rows(runs)
    if pseudo:
        lines += ["", "## Pseudo-labels", "", "What the filter kept and dropped, and why "
                  "(WER against the label where one exists, the teacher's mean token "
                  "log-probability elsewhere).", ""]  # fmt: skip
        lines += ["| " + " | ".join(PSEUDO_HEAD) + " |", "|" + "---|" * len(PSEUDO_HEAD)]
        lines += ["| " + " | ".join(row) + " |" for row in pseudo]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "## Runs", ""]
    for r in runs:
        lines += [
            f"### {r.name} ({r.role})",
            "",
            *[f"- {k}: {v}" for k, v in provenance(r).items()],
            "",
        ]
        if r.config_text:
            lines += ["```yaml", r.config_text.rstrip(), "```", ""]
    return "\n".join(lines) + "\n"


# ---- CLI ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dirs", nargs="+", help="run dirs (config.yaml, train_log.jsonl, eval/metrics.json)"
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--teacher", help="teacher run (dir name or model name); default: role 'teacher'"
    )
    parser.add_argument("--baseline", help="CE-only baseline run; default: role 'baseline'")
    parser.add_argument("--title", default="Student versus teacher")


def run(args: argparse.Namespace) -> int:
    out = write_report(
        args.run_dirs, args.out, teacher=args.teacher, baseline=args.baseline, title=args.title
    )
    print(f"report: {out / 'report.md'} and {out / 'report.html'}")
    return 0
