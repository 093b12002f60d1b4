"""``aesample systems``: list the built-in systems."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("systems", help="list the built-in systems")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..systems import SYSTEMS

    width = max(len(name) for name in SYSTEMS)
    for name, spec in SYSTEMS.items():
        print(f"{name:<{width}}  {spec.description}")
    print(f"{'custom':<{width}}  --pdb FILE (PDBFixer adds missing atoms/H; set system.forcefield/solvent)")
    return 0
