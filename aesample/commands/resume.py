"""``aesample resume RUN``: continue an interrupted run from its last checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("resume", help="continue an interrupted run")
    parser.add_argument("run", type=Path, help="run directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..driver import LoopDriver

    driver = LoopDriver.open(args.run)
    if driver.state.finished:
        print(f"{args.run}: already finished")
        print(driver.status_text())
        return 0
    summary = driver.run(progress=not args.quiet)
    print(driver.status_text())
    return 0 if summary["finished"] else 1
