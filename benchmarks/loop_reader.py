"""Command line shared by the scripts that re-read finished loop iterations: ``SCRIPT RUN_DIR K [K ...]``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run_and_iterations(doc: str, argv=None):
    """Parse ``RUN_DIR K [K ...]`` (``doc`` is the script's help) and open the run: (RunLayout, [K, ...])."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("iterations", type=int, nargs="+")
    args = ap.parse_args(argv)
    from aesample.runlayout import RunLayout

    return RunLayout.open(args.run_dir), args.iterations
