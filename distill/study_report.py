"""The study table: KD arms against the CE-only arm over seeds, with honest statistics.

    write_study_report(
        {"ce": ["runs/ce-s0", "runs/ce-s1", "runs/ce-s2"],
         "ddat": ["runs/ddat-s0", "runs/ddat-s1", "runs/ddat-s2"]},
        "runs/study", baseline="ce", teacher="runs/teacher", title="DDAT vs CE-only",
    )

Each run dir holds eval/metrics.json and eval/predictions.jsonl with per-item scores (as
`distill.eval.runner.write_outputs` writes them). Every arm lists the same seeds in the same
order, so seed i of an arm is paired with seed i of the baseline arm. For each quality metric
(WER %, CIDEr-D, SPIDEr when present) and arm the study gives:

- mean ± std (ddof=1) over seeds of the corpus values in metrics.json;
- per seed: the paired bootstrap 95 % CI over test items of the difference from the
  baseline arm's same seed, its verdict (beats / ties / loses) and the gap closed
  (CE - KD) / (CE - teacher);
- pooled over seeds: the seed-averaged difference with the test items resampled jointly
  (`distill.stats.pooled_paired_bootstrap`) and its verdict; the mean gap closed; and
  "beats in k/n seeds".

With a teacher, it also gives each arm's agreement with the teacher (fidelity, per task and
seed): the share of test items answered word for word as the teacher did.

It writes study.md, study.html (self-contained), study.png and study.json.
"""

from __future__ import annotations

import base64
import json
import os
from html import escape
from pathlib import Path

from distill import stats
from distill.report import Run, _fmt, load_run

STUDY_METRICS = ("wer", "cider_d", "spider")
_BOOTSTRAP = {"n_resamples": 2000, "confidence": 0.95, "seed": 0}


# ---- numbers ---------------------------------------------------------------------------------


def _load_arms(arms: dict[str, list[str | os.PathLike]], baseline: str) -> dict[str, list[Run]]:
    if baseline not in arms:
        raise ValueError(f"baseline arm {baseline!r} is not one of the arms {list(arms)}")
    counts = {name: len(dirs) for name, dirs in arms.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise ValueError(f"every arm needs the same (non-zero) number of seeds; got {counts}")
    loaded = {name: [load_run(d) for d in dirs] for name, dirs in arms.items()}
    seeds = {name: [r.metrics.get("seed") for r in runs] for name, runs in loaded.items()}
    ref = seeds[baseline]
    for name, s in seeds.items():
        if None not in s + ref and s != ref:
            raise ValueError(f"arm {name!r} has seeds {s}, the baseline arm {ref}: pair them up")
    return loaded


def _metric_keys(runs: list[Run]) -> dict[str, tuple[str, str]]:
    """{'task/metric': (label, better)} of the study metrics any run reports."""
    keys: dict[str, tuple[str, str]] = {}
    for r in runs:
        for k, m in r.table.items():
            if m.kind == "quality" and k.rsplit("/", 1)[1] in STUDY_METRICS:
                keys.setdefault(k, (m.label, m.better))
    return keys


def _value(run: Run, key: str) -> float | None:
    m = run.table.get(key)
    return None if m is None else m.value


def _items(run: Run, task: str) -> dict:
    if run.items is None:
        raise ValueError(f"`{run.path}`: {run.items_note}")
    if task not in run.items:
        raise ValueError(f"`{run.path}`: no per-item {task} scores")
    return run.items[task]


def _per_seed(key: str, base: Run, arm: Run, teacher_value: float | None) -> dict:
    task, name = key.rsplit("/", 1)
    b, v = _value(base, key), _value(arm, key)
    out = {"value": v, "baseline_value": b, "gap_closed": stats.gap_closed(b, v, teacher_value)}
    try:
        out.update(stats.compare_items(_items(base, task), _items(arm, task), name, **_BOOTSTRAP))
    except (KeyError, ValueError) as err:
        out.update(diff=None, lo=None, hi=None, verdict=None, note=f"no CI: {err}")
    return out


def _pooled(key: str, bases: list[Run], runs: list[Run]) -> dict:
    task, name = key.rsplit("/", 1)
    statistic, better = stats.METRICS[name]
    try:
        pairs = [
            stats.aligned_items(_items(b, task), _items(r, task), name) for b, r in zip(bases, runs)
        ]
    except (KeyError, ValueError) as err:
        return {"diff": None, "lo": None, "hi": None, "verdict": None, "note": f"no CI: {err}"}
    ci = stats.pooled_paired_bootstrap(pairs, statistic, **_BOOTSTRAP)
    return {**ci, "verdict": stats.verdict(ci["lo"], ci["hi"], better)}


def study_numbers(loaded: dict[str, list[Run]], baseline: str, teacher: Run | None) -> list[dict]:
    """One dict per metric: teacher value and, per arm, values, mean ± std, per-seed and
    pooled CIs against the baseline arm, gap closed, beats k/n."""
    out = []
    all_runs = [r for runs in loaded.values() for r in runs]
    for key, (label, better) in _metric_keys(all_runs).items():
        t = _value(teacher, key) if teacher is not None else None
        arms = {}
        for name, runs in loaded.items():
            values = [_value(r, key) for r in runs]
            known = [v for v in values if v is not None]
            mean, std = stats.mean_std(known) if known else (None, None)
            arm = {"values": values, "mean": mean, "std": std}
            if name != baseline:
                seeds = [_per_seed(key, b, r, t) for b, r in zip(loaded[baseline], runs)]
                gaps = [s["gap_closed"] for s in seeds if s["gap_closed"] is not None]
                arm.update(
                    per_seed=seeds,
                    pooled=_pooled(key, loaded[baseline], runs),
                    gap_closed_mean=stats.mean_std(gaps)[0] if gaps else None,
                    beats=sum(s["verdict"] == "beats" for s in seeds),
                    n_seeds=len(seeds),
                )
            arms[name] = arm
        out.append({"key": key, "label": label, "better": better, "teacher": t, "arms": arms})
    return out


def teacher_agreement(loaded: dict[str, list[Run]], teacher: Run | None) -> dict[str, dict]:
    """Fidelity per task: {task: {arm: {"values": [% of items answered as the teacher did,
    per seed], "mean", "std", "items"}}} (`stats.agreement`). Empty without a teacher or
    its predictions; a run without predictions has None for its seed."""
    if teacher is None:
        return {}
    try:
        reference = stats.load_answers(teacher.path)
    except FileNotFoundError:
        return {}
    answers = {}
    for name, runs in loaded.items():
        answers[name] = []
        for r in runs:
            try:
                answers[name].append(stats.load_answers(r.path))
            except FileNotFoundError:
                answers[name].append({})
    out: dict[str, dict] = {}
    for task, ref in reference.items():
        arms = {}
        for name, per_seed in answers.items():
            values, items = [], 0
            for a in per_seed:
                try:
                    share, n = stats.agreement(a.get(task, {}), ref)
                except ValueError:
                    values.append(None)
                    continue
                values.append(100.0 * share)
                items = max(items, n)
            known = [v for v in values if v is not None]
            mean, std = stats.mean_std(known) if known else (None, None)
            arms[name] = {"values": values, "mean": mean, "std": std, "items": items}
        out[task] = arms
    return out


AGREEMENT_NOTE = (
    "Agreement with the teacher (fidelity): the share of test items, in %, whose answer is the "
    "teacher's word for word (case and punctuation aside). It says how much of the teacher's "
    "behaviour a student took on, right answers and wrong ones alike; it is a description, "
    "not a quality claim, and has no CI."
)


def agreement_rows(agree: dict[str, dict], baseline: str) -> tuple[list[str], list[list[str]]]:
    tasks = list(agree)
    head = ["arm"] + [f"{t}: mean ± std" for t in tasks] + [f"{t}: per seed" for t in tasks]
    names = list(dict.fromkeys(n for arms in agree.values() for n in arms))  # the arms' order
    names.sort(key=lambda n: n != baseline)
    rows = []
    for name in names:
        cells = [f"{name} (CE-only)" if name == baseline else name]
        cells += [_pm(agree[t][name]) if name in agree[t] else "n/a" for t in tasks]
        cells += [", ".join(_fmt(v) for v in agree[t][name]["values"]) if name in agree[t]
                  else "n/a" for t in tasks]  # fmt: skip
        rows.append(cells)
    return head, rows


# ---- writing ---------------------------------------------------------------------------------


def _ci(d: dict) -> str:
    if d.get("lo") is not None:
        return stats.format_ci(d, 3)
    return "no per-item scores: no CI" if "per-item" in d.get("note", "") else "no CI"


def _diff(d: dict) -> str:
    return "n/a" if d.get("diff") is None else f"{d['diff']:+.4g}"


def _pm(arm: dict) -> str:
    return "n/a" if arm["mean"] is None else f"{_fmt(arm['mean'])} ± {_fmt(arm['std'], 3)}"


def summary_rows(metric: dict, baseline: str) -> list[list[str]]:
    """Cells of the per-metric summary table, one row per arm (baseline first)."""
    rows = []
    for name, arm in sorted(metric["arms"].items(), key=lambda kv: kv[0] != baseline):
        vals = ", ".join(_fmt(v) for v in arm["values"])
        if name == baseline:
            rows.append([f"{name} (CE-only)", _pm(arm), vals, "-", "-", "-", "-", "-"])
            continue
        p = arm["pooled"]
        gaps = ", ".join(_fmt(s["gap_closed"], 3) for s in arm["per_seed"])
        rows.append([name, _pm(arm), vals, f"{_diff(p)} {_ci(p)}", p["verdict"] or "no verdict",
                     f"beats in {arm['beats']}/{arm['n_seeds']} seeds",
                     _fmt(arm["gap_closed_mean"], 3), gaps])  # fmt: skip
    return rows


SUMMARY_HEAD = ["arm", "mean ± std", "per seed", "pooled diff vs CE-only", "pooled verdict",
                "per-seed verdicts", "gap closed (mean)", "gap closed per seed"]  # fmt: skip
SEED_HEAD = ["arm", "seed", "value", "CE-only", "diff", "CI", "verdict", "gap closed"]


def seed_rows(metric: dict, baseline: str) -> list[list[str]]:
    rows = []
    for name, arm in metric["arms"].items():
        for i, s in enumerate(arm.get("per_seed", [])):
            rows.append([name, str(i), _fmt(s["value"]), _fmt(s["baseline_value"]), _diff(s),
                         _ci(s), s["verdict"] or "no verdict", _fmt(s["gap_closed"], 3)])  # fmt: skip
    return rows


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return out + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def render_markdown(title: str, setting: str, numbers: list[dict], baseline: str, meta: dict):
    lines = [f"# {title}", ""] + ([setting, ""] if setting else [])
    lines += [
        f"CE-only arm: `{baseline}`; teacher: `{meta['teacher'] or 'none'}`; "
        f"{meta['n_seeds']} seeds per arm. CIs: paired bootstrap over test items, "
        f"{_BOOTSTRAP['n_resamples']} resamples, {round(100 * _BOOTSTRAP['confidence'])} %; "
        "a verdict is 'ties' whenever the CI contains 0. Gap closed = (CE - KD) / (CE - teacher).",
        "",
    ]
    for m in numbers:
        t = f"; teacher {_fmt(m['teacher'])}" if m["teacher"] is not None else ""
        lines += [f"## {m['label']} ({m['better']} is better{t})", ""]
        lines += _md_table(SUMMARY_HEAD, summary_rows(m, baseline))
        lines += ["Per seed, against the CE-only arm's same seed:", ""]
        lines += _md_table(SEED_HEAD, seed_rows(m, baseline))
    if meta.get("teacher_agreement"):
        lines += ["## Agreement with the teacher", "", AGREEMENT_NOTE, ""]
        lines += _md_table(*agreement_rows(meta["teacher_agreement"], baseline))
    lines += ["![study](study.png)", ""]
    return "\n".join(lines)


def _html_table(head: list[str], rows: list[list[str]], table_id: str) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table id="{table_id}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def render_html(title: str, setting: str, numbers: list[dict], baseline: str, meta, png: Path):
    from distill.report_html import _CSS

    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{escape(title)}</h1>"]  # fmt: skip
    if setting:
        parts.append(f"<p>{escape(setting)}</p>")
    parts.append(
        f"<p>CE-only arm: <code>{escape(baseline)}</code>; teacher: "
        f"<code>{escape(str(meta['teacher'] or 'none'))}</code>; {meta['n_seeds']} seeds per arm. "
        "Paired bootstrap 95 % CIs over test items; 'ties' whenever the CI contains 0. "
        "Gap closed = (CE - KD) / (CE - teacher).</p>"
    )
    for i, m in enumerate(numbers):
        t = f"; teacher {_fmt(m['teacher'])}" if m["teacher"] is not None else ""
        parts.append(f"<h2>{escape(m['label'])} ({m['better']} is better{escape(t)})</h2>")
        parts.append(_html_table(SUMMARY_HEAD, summary_rows(m, baseline), f"summary-{i}"))
        parts.append(_html_table(SEED_HEAD, seed_rows(m, baseline), f"seeds-{i}"))
    if meta.get("teacher_agreement"):
        parts.append(f"<h2>Agreement with the teacher</h2><p>{escape(AGREEMENT_NOTE)}</p>")
        parts.append(_html_table(*agreement_rows(meta["teacher_agreement"], baseline), "agreement"))
    if png.is_file():
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f'<img alt="study" src="data:image/png;base64,{data}">')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def plot_study(numbers: list[dict], baseline: str, path: Path) -> Path | None:
    """One panel per metric: per-seed points and mean ± std per arm, the teacher as a line,
    the CE-only arm highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not numbers:
        return None
    fig, axes = plt.subplots(1, len(numbers), figsize=(4.2 * len(numbers), 3.4), squeeze=False)
    for ax, m in zip(axes[0], numbers):
        names = sorted(m["arms"], key=lambda n: n != baseline)
        for x, name in enumerate(names):
            arm = m["arms"][name]
            color = "tab:gray" if name == baseline else f"C{x % 10}"
            if name == baseline:
                ax.axvspan(x - 0.4, x + 0.4, color="0.92", zorder=0)
            pts = [v for v in arm["values"] if v is not None]
            offsets = [0.12 * (i - (len(pts) - 1) / 2) for i in range(len(pts))]
            ax.scatter([x + o for o in offsets], pts, color=color, s=18, zorder=3)
            if arm["mean"] is not None:
                ax.errorbar([x + 0.3], [arm["mean"]], yerr=[arm["std"]], fmt="s", color=color,
                            capsize=4, zorder=3)  # fmt: skip
        if m["teacher"] is not None:
            ax.axhline(m["teacher"], color="black", linestyle="--", linewidth=1)
            ax.annotate("teacher", (0.01, m["teacher"]), xycoords=("axes fraction", "data"),
                        textcoords="offset points", xytext=(0, 2), fontsize=7)  # fmt: skip
        ticks = [f"{n}\n(CE-only)" if n == baseline else n for n in names]
        ax.set_xticks(range(len(names)), ticks, fontsize=8)
        ax.set_title(f"{m['label']} ({m['better']} better)", fontsize=9)
        ax.margins(x=0.15, y=0.12)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_study_report(
    arms: dict[str, list[str | os.PathLike]],
    out_dir: str | os.PathLike,
    *,
    baseline: str,
    teacher: str | os.PathLike | None,
    title: str,
    setting: str = "",
) -> Path:
    """Write study.md, study.html, study.png and study.json into `out_dir`; returns it.

    Args:
        arms: arm name -> run dirs, one per seed, the same seeds in the same order per arm.
        out_dir: where to write.
        baseline: the CE-only arm's name.
        teacher: the teacher's run dir (its values are the gap-closed target), or None.
        title: the heading.
        setting: one paragraph on the setting (data, model sizes, steps), shown under it.

    Raises:
        ValueError: unknown baseline arm, unequal seed counts, or mismatched seeds.
    """
    loaded = _load_arms(arms, baseline)
    t_run = load_run(teacher) if teacher is not None else None
    numbers = study_numbers(loaded, baseline, t_run)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "title": title,
        "setting": setting,
        "baseline": baseline,
        "teacher": None if teacher is None else str(teacher),
        "n_seeds": len(next(iter(loaded.values()))),
        "arms": {name: [str(r.path) for r in runs] for name, runs in loaded.items()},
        "seeds": [r.metrics.get("seed") for r in loaded[baseline]],
        "bootstrap": dict(_BOOTSTRAP, method="paired percentile bootstrap over test items"),
        "teacher_agreement": teacher_agreement(loaded, t_run),
    }
    png = plot_study(numbers, baseline, out / "study.png")
    (out / "study.json").write_text(json.dumps({**meta, "metrics": numbers}, indent=2) + "\n")
    (out / "study.md").write_text(
        render_markdown(title, setting, numbers, baseline, meta), encoding="utf-8"
    )
    (out / "study.html").write_text(
        render_html(title, setting, numbers, baseline, meta, png or out / "study.png"),
        encoding="utf-8",
    )
    return out
