"""``aesample status RUN``: where a run stands."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("status", help="show the progress of a run")
    parser.add_argument("run", type=Path, help="run directory")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..driver import LoopDriver

    print(LoopDriver.open(args.run).status_text())
    return 0
