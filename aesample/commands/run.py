"""``aesample run``: start the eABF <-> autoencoder loop in a new run directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import add_config_arguments, config_from_args


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("run", help="run the iterative eABF / autoencoder loop")
    add_config_arguments(parser)
    parser.add_argument("--out", type=Path, help="run directory (default: output.directory); never overwritten")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..driver import LoopDriver

    config = config_from_args(args)
    driver = LoopDriver.create(config, args.out)
    print(f"aesample: run directory {driver.run_dir} ({config.system.name})", flush=True)
    summary = driver.run(progress=not args.quiet)
    print(driver.status_text())
    print(f"report: {driver.run_dir / 'report.html'}" if config.output.plots else "")
    return 0 if summary["finished"] else 1
