"""The ``audit`` command line: one sub-command per module in ``audit.commands``.

Exit codes: 0 ok, 1 policy violated, 2 bad input or usage. A user's mistake
(any ``USER_ERRORS``) prints one line ``audit: error: ...`` and exits 2; a bug
keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from audit.errors import USER_ERRORS

#: Modules under ``audit.commands`` that each define ``register(subparsers)``;
#: the parser they add carries the handler as ``func``.
COMMAND_MODULES = ("demo", "run", "gate", "fast_gate", "models", "noise", "attack", "retrain")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="audit", description="Audit CT models for robustness to realistic scanner noise.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"audit.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
