"""``aesample config``: print the effective configuration as YAML."""

from __future__ import annotations

import argparse

from . import add_config_arguments, config_from_args


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "config", help="print the effective configuration (YAML that loads back identically)"
    )
    add_config_arguments(parser)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..config import dump_config

    print(dump_config(config_from_args(args)), end="")
    return 0
