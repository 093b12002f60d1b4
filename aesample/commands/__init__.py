"""One module per ``aesample`` sub-command, each with ``add_parser(subparsers)`` and ``main(args)``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import Config, ConfigError, apply_overrides, config_from_dict, effective_config, load_config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by commands that build a run configuration."""
    parser.add_argument("config", nargs="?", type=Path, help="YAML configuration file (default: built-in defaults)")
    parser.add_argument("--system", help="built-in system name (see `aesample systems`)")
    parser.add_argument(
        "--pdb", nargs="+", type=Path, metavar="FILE",
        help="custom PDB file(s): the first defines the system, all are starting structures",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set md.timestep=1.0 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """Effective config from a YAML file (or defaults), --system/--pdb and --set overrides."""
    config = load_config(args.config) if args.config is not None else config_from_dict({})
    overrides: list[str] = []
    if args.system:
        overrides.append(f"system.name={args.system}")
    if args.pdb:
        if args.system and args.system != "custom":
            raise ConfigError(f"--system {args.system} and --pdb {args.pdb[0]}: give either a built-in system or a "
                              "PDB file, not both")
        if config.system.pdb is None and config.system.name not in ("custom", "alanine-dipeptide"):
            raise ConfigError(f"{args.config}: system.name is '{config.system.name}' but --pdb {args.pdb[0]} was "
                              "given: a built-in system or a PDB file, not both")
        overrides += ["system.name=custom", f"system.pdb={args.pdb[0]}"]
        if len(args.pdb) > 1:
            overrides.append("loop.initial_structures=[" + ", ".join(str(p) for p in args.pdb[1:]) + "]")
    overrides += list(args.overrides)
    if overrides:
        config = apply_overrides(config, overrides)
    return effective_config(config)
