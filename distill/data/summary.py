"""A short data summary: what a run trains on, before it trains.

`summarize(dataset)` counts items by task, bins durations, gives text-length deciles
and the skipped items by reason; `to_markdown(summary)` renders it for a report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from distill.data.annotations import Item
from distill.data.sampling import item_duration

# Duration bin edges in seconds; SALMONN cuts at 30 s, so ">30" means "will be cut".
DURATION_EDGES = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0)


def _bin_label(lo: float, hi: float | None) -> str:
    return f"{lo:g}-{hi:g}s" if hi is not None else f">{lo:g}s"


def duration_histogram(
    durations: Sequence[float], edges: Sequence[float] = DURATION_EDGES
) -> dict[str, int]:
    """Count of clips in each [edge_i, edge_i+1) bin, plus an open last bin."""
    labels = [_bin_label(a, b) for a, b in zip(edges[:-1], edges[1:])] + [
        _bin_label(edges[-1], None)
    ]
    counts = dict.fromkeys(labels, 0)
    idx = np.searchsorted(np.asarray(edges), np.asarray(durations, dtype=float), side="right") - 1
    for i in np.clip(idx, 0, len(labels) - 1).tolist():
        counts[labels[i]] += 1
    return counts


def deciles(values: Sequence[float]) -> list[float]:
    """The 0th, 10th, ..., 100th percentiles (empty input gives [])."""
    if len(values) == 0:
        return []
    return [
        round(float(q), 2)
        for q in np.percentile(np.asarray(values, dtype=float), np.arange(0, 101, 10))
    ]


def summarize(data) -> dict:
    """Summary of an `AudioDataset` (or a list of items).

    Returns:
        {"num_items", "num_total", "by_task", "hours", "duration_histogram",
         "duration_deciles", "text_chars_deciles", "text_words_deciles", "skipped",
         "skipped_paths"}; skipped counts come from the dataset's checks.
    """
    items: list[Item] = list(getattr(data, "items", data))
    durations = [item_duration(it) for it in items]
    skipped = dict(getattr(data, "skipped", {}))
    return {
        "num_items": len(items),
        "num_total": int(getattr(data, "total", len(items))),
        "by_task": dict(sorted(Counter(it.task for it in items).items())),
        "hours": round(sum(durations) / 3600.0, 4),
        "duration_histogram": duration_histogram(durations),
        "duration_deciles": deciles(durations),
        "text_chars_deciles": deciles([len(it.text) for it in items]),
        "text_words_deciles": deciles([len(it.text.split()) for it in items]),
        "skipped": skipped,
        "skipped_paths": list(getattr(data, "skipped_paths", []))[:20],
    }


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def to_markdown(summary: dict, title: str = "Data summary") -> str:
    """Render `summarize()` output as Markdown tables."""
    s = summary
    lines = [f"## {title}", ""]
    lines.append(f"{s['num_items']} usable items of {s['num_total']} ({s['hours']:.3f} h).")
    lines += ["", _row(["task", "items"]), _row(["---", "---:"])]
    lines += [_row([t, n]) for t, n in s["by_task"].items()]
    hist = s["duration_histogram"]
    lines += [
        "",
        "**Durations**",
        "",
        _row(hist.keys()),
        _row(["---:"] * len(hist)),
        _row(hist.values()),
    ]
    lines += [
        "",
        "**Deciles** (0 %, 10 %, ..., 100 %)",
        "",
        _row(["measure", "deciles"]),
        _row(["---", "---"]),
    ]
    for key, name in (
        ("duration_deciles", "duration (s)"),
        ("text_chars_deciles", "text (chars)"),
        ("text_words_deciles", "text (words)"),
    ):
        lines.append(_row([name, ", ".join(f"{v:g}" for v in s[key])]))
    lines += ["", "**Skipped**", ""]
    if s["skipped"]:
        lines += [_row(["reason", "items"]), _row(["---", "---:"])]
        lines += [_row([r, n]) for r, n in sorted(s["skipped"].items())]
        lines += ["", "First skipped files: " + ", ".join(f"`{p}`" for p in s["skipped_paths"][:5])]
    else:
        lines.append("none")
    return "\n".join(lines) + "\n"
