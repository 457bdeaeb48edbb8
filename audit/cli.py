"""The ``audit`` command line: one sub-command per module in ``audit.commands``.

Exit codes: 0 ok, 1 policy violated, 2 bad input or usage. A user's mistake
(any ``USER_ERRORS``) prints one line ``audit: error: ...`` and exits 2; a bug
keeps its traceback.

Each command module registers its arguments (``register``) and imports what it
runs at its top. Only the module of the command asked for is loaded (all of
them for ``audit --help``), so ``audit gate`` loads the gate and report
reading, never the engines, torch or the campaign.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from audit.errors import USER_ERRORS

#: Command name -> module under ``audit.commands`` defining ``register(subparsers)``; the parser it adds
#: carries the handler as ``func``.
COMMANDS = {"demo": "demo", "run": "run", "report": "report", "gate": "gate", "fast-gate": "fast_gate",
            "models": "models", "noise": "noise", "attack": "attack", "retrain": "retrain"}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of the command ``only`` alone (the others are not imported)."""
    parser = argparse.ArgumentParser(prog="audit", description="Audit CT models for robustness to realistic scanner noise.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(f"audit.commands.{module}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(first if first in COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"audit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("audit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
