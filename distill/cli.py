"""The `distill` command line.

Each sub-command lives in the module that owns it; this file only dispatches.
A command module exposes `add_arguments(parser)` and `run(args) -> int`.
Modules are imported lazily so `distill --help` stays fast.

A user error (a `DistillError`: bad config, checkpoint, audio, loss inputs; or a missing
file) prints one line, `distill: error: ...`, and exits with status 2, like a usage
error. `distill --debug COMMAND ...` prints the full traceback instead. Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from distill.errors import DistillError

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
    "export": ("distill.export", "write a trained model as a SALMONN checkpoint or HF dirs"),
}

# Bad input rather than a bug: one line, status 2.
USER_ERRORS = (
    DistillError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)
USER_ERROR_STATUS = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill", description="Knowledge distillation of audio language models."
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = False
    while argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
    try:
        return _dispatch(argv)
    except USER_ERRORS as err:
        return _fail(error_line(err), debug)
    except SystemExit as err:  # `raise SystemExit("message")` in a command is a user error
        if not isinstance(err.code, str):
            raise
        return _fail(error_line(err.code), debug)


def _dispatch(argv: list[str]) -> int:
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


def _fail(line: str, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    else:
        print(f"distill: error: {line}", file=sys.stderr)
    return USER_ERROR_STATUS


def error_line(err: BaseException | str) -> str:
    """The error as one line: its message with line breaks folded, or the OS's words."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.strerror}: {err.filename}"  # open()'s own error, without "[Errno 2]"
    elif isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])  # KeyError quotes its message
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    raise SystemExit(main())
