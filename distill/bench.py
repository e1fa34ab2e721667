"""`distill bench NAME`: benchmarks that print side-by-side ratios measured in one run.

Benchmarks are plug-ins found through the `distill.benchmarks` entry-point group
(`losses` lives in the losses package, `train` in `distill.bench_train`), so the core never
imports a plug-in package by name.
"""

from __future__ import annotations

import argparse
from importlib.metadata import entry_points


def available() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group="distill.benchmarks")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="benchmark name (e.g. losses, train)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")


def run(args: argparse.Namespace) -> int:
    found = available()
    if args.name not in found:
        names = ", ".join(sorted(found)) or "none (is the package installed with pip install -e .?)"
        raise SystemExit(f"unknown benchmark {args.name!r}; available: {names}")
    return int(found[args.name].load()(list(args.args)) or 0)
