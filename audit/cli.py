"""The ``audit`` command line: one sub-command per module in ``audit.commands``.

Exit codes: 0 ok, 1 policy violated, 2 bad input or usage, 3 internal error.
A user's mistake (any ``USER_ERRORS``, or a bad flag) prints one line
``audit: error: ...`` and exits 2. Anything else is a bug: one line
``audit <command>: internal error: <type>: <message>`` and exit 3; the global
``--debug`` flag adds the traceback (of user errors too).

Each command module registers its arguments (``register``) and imports what it
runs at its top. Only the module of the command asked for is loaded (all of
them for ``audit --help``), so ``audit gate`` loads the gate and report
reading, never the engines, torch or the campaign.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from typing import NoReturn, Sequence

from audit.errors import USER_ERRORS

#: Command name -> module under ``audit.commands`` defining ``register(subparsers)``; the parser it adds
#: carries the handler as ``func``.
COMMANDS = {"demo": "demo", "run": "run", "report": "report", "gate": "gate", "fast-gate": "fast_gate",
            "models": "models", "noise": "noise", "attack": "attack", "retrain": "retrain", "cache": "cache",
            "serve": "serve"}

#: Exit codes.
EXIT_OK, EXIT_POLICY, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def one_line(text: object) -> str:
    """A message on one line (a multi-line message from a library would look like several errors)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the command and pointing at its --help (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of the command ``only`` alone (the others are not imported)."""
    parser = OneLineParser(prog="audit", description="Audit CT models for robustness to realistic scanner noise.")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error (any command)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(f"audit.commands.{module}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    debug = "--debug" in argv[: argv.index(first)] if first in argv else "--debug" in argv
    try:
        parser = build_parser(first if first in COMMANDS else None)
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, one line already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        print("audit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - a command module that fails to import is a bug: one line, exit 3
        return _internal(first or "", exc, debug)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        if args.debug:
            traceback.print_exc()
        print(f"audit: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("audit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the last resort: never a bare traceback, never exit 1 (policy)
        return _internal(args.command, exc, args.debug)


def _internal(command: str, exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    name = f"audit {command}" if command else "audit"
    print(f"{name}: internal error: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
    return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
