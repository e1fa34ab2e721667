"""PNG plots for the report (matplotlib, Agg backend: no display needed).

- training_curves.png: one panel per loss term in train_log.jsonl, one line per run;
- metrics_bars.png: one panel per quality/efficiency metric, a bar per run, the teacher hatched,
  run/teacher ratios above the bars;
- tradeoff.png: quality against inference latency, marker area proportional to memory.
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


def plot_training_curves(runs, out: Path) -> Path | None:
    from distill.report import loss_terms

    logged = [r for r in runs if r.train_log]
    terms: dict[str, None] = {}
    for r in logged:
        terms.update(dict.fromkeys(loss_terms(r.train_log)))
    if not terms:
        return None
    # the total first, the learning rate last, the loss terms in between
    order = sorted(terms, key=lambda t: (t != "loss", t == "lr"))
    terms = dict.fromkeys(order)
    colors = _colors(runs)
    fig, axes = _grid(len(terms))
    for ax, term in zip(axes, terms):
        for r in logged:
            pts = [
                (row.get("step", i), row[term])
                for i, row in enumerate(r.train_log)
                if isinstance(row.get(term), (int, float))
            ]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=r.name, color=colors[r.name], linewidth=1.4)
        ax.set_title(term)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if term != "lr" and all(
            v > 0
            for r in logged
            for row in r.train_log
            for v in [row.get(term)]
            if isinstance(v, (int, float))
        ):
            ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle("Training curves per loss term")
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
                ax.annotate(f"{ratio:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
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
    quality = [row for row in rows if row["kind"] == "quality"]
    points = {r.name: (_first(r, _LATENCY_KEYS), _first(r, _MEMORY_KEYS)) for r in runs}
    if not quality or not any(lat[1] is not None for lat, _ in points.values()):
        return None
    colors = _colors(runs)
    fig, axes = _grid(len(quality), cols=2, size=(5.0, 3.6))
    for ax, row in zip(axes, quality):
        lat_key = mem_key = None
        for r in runs:
            (lk, lat), (mk, mem) = points[r.name]
            q = row["values"].get(r.name)
            if lat is None or q is None:
                continue
            lat_key, mem_key = lat_key or lk, mem_key or mk
            area = 60 + 400 * (mem or 0) / max(1e-9, max((p[1][1] or 0) for p in points.values()))
            ax.scatter([lat], [q], s=area, color=colors[r.name], alpha=0.7, edgecolors="black")
            ax.annotate(f"{r.name}\n{mem:.3g} GiB" if mem is not None else r.name, (lat, q),
                        textcoords="offset points", xytext=(6, 6), fontsize=8)  # fmt: skip
        ax.set_xlabel(f"latency: {lat_key or 'inference s'}")
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
