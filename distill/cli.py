"""The `distill` command line.

Each sub-command lives in the module that owns it; this file only dispatches.
A command module exposes `add_arguments(parser)` and `run(args) -> int`.
Modules are imported lazily so `distill --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("distill.demo", "offline end-to-end demo: synth data, teacher, students, report"),
    "study": (
        "distill.demo.study",
        "every KD arm over seeds, with paired bootstrap CIs vs CE-only",
    ),
    "synth": ("distill.data.synth", "write the synthetic speech + sound corpus"),
    "train": ("distill.recipe", "run a recipe YAML (same as recipes/*.py)"),
    "cache": ("distill.cache", "run a teacher once and cache sparse top-k signals"),
    "eval": ("distill.eval.cli", "evaluate a model: WER, CIDEr-D/SPIDEr, efficiency"),
    "report": ("distill.report", "write the student-versus-teacher report for run dirs"),
    "inspect": ("distill.inspect", "parameter counts, memory and checkpoint keys of a preset"),
    "bench": ("distill.bench", "benchmarks that print side-by-side ratios"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill", description="Knowledge distillation of audio language models."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"distill {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
