"""The ``aesample`` command line: ``aesample <command> [options]``.

Each command lives in :mod:`aesample.commands` as a module with ``add_parser`` and
``main``; this file only dispatches and turns user errors into one-line messages
with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

__all__ = ["main", "build_parser", "COMMANDS", "version"]

#: Command name -> module in aesample.commands.
COMMANDS = {
    "run": "run",
    "resume": "resume",
    "status": "status",
    "report": "report",
    "eabf": "eabf",
    "config": "config",
    "systems": "systems",
}


def version() -> str:
    """The installed package's version (from its metadata; the source tree's pyproject.toml otherwise)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("aesample")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree that is not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aesample",
        description="Autoencoder collective variables + eABF enhanced sampling in OpenMM.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"aesample {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"aesample.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"aesample.commands.{module_name}":
                raise
            continue  # command not shipped in this build
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 for bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .threads import apply_torch_threads

    # Before any command touches torch: its default pool (one thread per core) spins on the tiny CV ops and
    # slows MD by an order of magnitude as soon as another process competes for the cores.
    apply_torch_threads()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as exc:
        # User-facing errors (config, system, selection, file) carry a message naming the culprit.
        if args.debug:
            raise
        print(f"aesample {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
