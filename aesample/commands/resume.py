"""``aesample resume RUN [--max-iterations N]``: continue an interrupted (or extend a finished) run."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("resume", help="continue an interrupted run")
    parser.add_argument("run", type=Path, help="run directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--max-iterations", type=int, metavar="N",
                        help="raise loop.max_iterations to N first: a run that stopped at its limit without "
                             "converging goes on with the next iteration")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..driver import LoopDriver

    driver = LoopDriver.open(args.run)
    with driver.locked():  # a second `resume` of the same run is refused while this one runs
        if args.max_iterations is not None:
            driver.extend(args.max_iterations)
        if driver.state.finished:
            print(f"{args.run}: already finished")
            print(driver.status_text())
            return 0
        summary = driver.run(progress=not args.quiet)
    print(driver.status_text())
    return 0 if summary["finished"] else 1
