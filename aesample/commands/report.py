"""``aesample report RUN``: (re)write the run's summary and report."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("report", help="write RUN/report.md and RUN/report.html")
    parser.add_argument("run", type=Path, help="run directory")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..driver import LoopDriver
    from ..report import write_report

    driver = LoopDriver.open(args.run)
    driver.write_summary()
    path = write_report(driver, driver.state)
    print(f"wrote {path} and {path.with_suffix('.html')}")
    return 0
