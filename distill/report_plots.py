"""PNG plots for the report (matplotlib, Agg backend: no display needed).

- training_curves.png: one panel per loss term in train_log.jsonl that varies, one line per run;
- metrics_bars.png: one panel per quality/efficiency metric, a bar per run, the teacher hatched,
  run/teacher ratios above the bars;
- tradeoff.png: quality against inference latency, marker area proportional to memory, latency
  bars over the repeats' spread, "(latency: noise)" where the ratio to the teacher is noise.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_LATENCY_KEYS = ("baseline/inference_s", "strict/inference_s")
_MEMORY_KEYS = ("baseline/memory_gb", "strict/memory_gb")


def _colors(runs) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {r.name: cmap(i % 10) for i, r in enumerate(runs)}


def _grid(n: int, cols: int = 3, size: tuple[float, float] = (4.2, 3.0)):
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _series(run, term: str) -> tuple[list, list]:
    pts = [
        (row.get("step", i), row[term])
        for i, row in enumerate(run.train_log)
        if isinstance(row.get(term), (int, float)) and not isinstance(row.get(term), bool)
    ]
    return tuple(map(list, zip(*pts))) if pts else ([], [])


def _varies(ys: list) -> bool:
    return len(ys) > 1 and max(ys) - min(ys) > 1e-12 * max(1.0, abs(max(ys)))


def curve_terms(runs) -> list[str]:
    """Loss terms worth a panel: the total first, the lr last, no series that is constant in
    every run (fixed `*/weight`s, a constant lr), and no `X/loss` that repeats, in every run,
    another series of X (a one-term loss logs its term twice: `ctc/ctc` and `ctc/loss`)."""
    from distill.report_common import loss_terms

    terms: dict[str, None] = {}
    for r in runs:
        terms.update(dict.fromkeys(loss_terms(r.train_log)))
    kept = [t for t in terms if any(_varies(_series(r, t)[1]) for r in runs)]
    kept = [t for t in kept if not _repeats_a_sibling(t, kept, runs)]
    return sorted(kept, key=lambda t: (t != "loss", t == "lr"))


def _repeats_a_sibling(term: str, terms: list[str], runs) -> bool:
    if not term.endswith("/loss"):
        return False
    prefix = term[: -len("loss")]
    siblings = [
        t for t in terms if t.startswith(prefix) and t != term and "/" not in t[len(prefix) :]
    ]
    return any(all(_series(r, t) == _series(r, term) for r in runs) for t in siblings)


def plot_training_curves(runs, out: Path) -> Path | None:
    """One panel per varying loss term, the runs overlaid; short titles, no suptitle."""
    logged = [r for r in runs if r.train_log]
    terms = curve_terms(logged)
    if not terms:
        return None
    colors = _colors(runs)
    fig, axes = _grid(len(terms), cols=4, size=(3.6, 2.7))
    for ax, term in zip(axes, terms):
        lows, highs = [], []
        for r in logged:
            xs, ys = _series(r, term)
            if xs:
                ax.plot(xs, ys, label=r.name, color=colors[r.name], linewidth=1.4)
                lows.append(min(ys))
                highs.append(max(ys))
        ax.set_title(textwrap.shorten(term, 32, placeholder="..."), fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if term != "lr" and min(lows) > 0 and max(highs) >= 10 * min(lows):  # a decade or more
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = out / "training_curves.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_metric_bars(runs, rows, teacher, out: Path) -> Path | None:
    shown = [
        row
        for row in rows
        if row["kind"] in ("quality", "efficiency")
        and any(v is not None for v in row["values"].values())
    ]
    if not shown:
        return None
    colors = _colors(runs)
    fig, axes = _grid(len(shown))
    for ax, row in zip(axes, shown):
        names = [r.name for r in runs]
        vals = [row["values"][n] if row["values"][n] is not None else 0.0 for n in names]
        bars = ax.bar(range(len(names)), vals, color=[colors[n] for n in names])
        for bar, n in zip(bars, names):
            if teacher is not None and n == teacher.name:
                bar.set_hatch("//")
                bar.set_edgecolor("black")
            ratio = row["ratios"].get(n)
            if ratio is not None:
                text = f"{ratio:.2f}x" + ("\n(noise)" if row.get("noise", {}).get(n) else "")
                ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=8)  # fmt: skip
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        arrow = {"lower": " (lower is better)", "higher": " (higher is better)"}.get(
            row["better"], ""
        )
        ax.set_title(textwrap.fill(row["label"] + arrow, 45), fontsize=9)
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Each run against the teacher (hatched); labels are run/teacher ratios")
    fig.tight_layout()
    path = out / "metrics_bars.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _first(run, keys):
    for k in keys:
        m = run.table.get(k)
        if m is not None and m.value is not None:
            return k, m.value
    return None, None


def plot_tradeoff(runs, rows, out: Path) -> Path | None:
    """Quality against latency; latency error bars span the repeats' spread, and a run whose
    latency ratio to the teacher is within that spread is labelled "(latency: noise)"."""
    quality = [row for row in rows if row["kind"] == "quality"]
    noise = {row["key"]: row.get("noise", {}) for row in rows if row["kind"] == "efficiency"}
    points = {r.name: (_first(r, _LATENCY_KEYS), _first(r, _MEMORY_KEYS)) for r in runs}
    if not quality or not any(lat[1] is not None for lat, _ in points.values()):
        return None
    colors = _colors(runs)
    fig, axes = _grid(len(quality), cols=2, size=(5.0, 3.6))
    for ax, row in zip(axes, quality):
        lat_key = mem_key = None
        bars = False
        for r in runs:
            (lk, lat), (mk, mem) = points[r.name]
            q = row["values"].get(r.name)
            if lat is None or q is None:
                continue
            lat_key, mem_key = lat_key or lk, mem_key or mk
            area = 60 + 400 * (mem or 0) / max(1e-9, max((p[1][1] or 0) for p in points.values()))
            ax.scatter([lat], [q], s=area, color=colors[r.name], alpha=0.7, edgecolors="black")
            spread = r.table[lk].spread
            if spread:
                ax.errorbar([lat], [q], xerr=[spread / 2], color=colors[r.name], capsize=3)
                bars = True
            text = f"{r.name}\n{mem:.3g} GiB" if mem is not None else r.name
            text += "\n(latency: noise)" if noise.get(lk, {}).get(r.name) else ""
            ax.annotate(text, (lat, q), textcoords="offset points", xytext=(6, 6), fontsize=8)
        bar_note = " (bars: spread of the repeats)" if bars else ""
        ax.set_xlabel(f"latency: {lat_key or 'inference s'}{bar_note}")
        ax.set_ylabel(row["label"])
        ax.set_title(
            textwrap.fill(f"{row['label']} vs latency (area ~ {mem_key or 'memory'})", 55),
            fontsize=9,
        )
        ax.margins(0.2)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "tradeoff.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def make_plots(runs, rows, teacher, out: Path) -> list[Path]:
    """Write every plot that has data; returns their paths."""
    made = [
        plot_training_curves(runs, out),
        plot_metric_bars(runs, rows, teacher, out),
        plot_tradeoff(runs, rows, out),
    ]
    return [p for p in made if p is not None]
