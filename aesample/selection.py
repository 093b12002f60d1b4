"""Atom selections in mdtraj's selection language, with errors that show the selection."""

from __future__ import annotations

import mdtraj
import numpy as np

__all__ = ["SelectionError", "select_atoms"]


class SelectionError(ValueError):
    """An atom selection is malformed or matches no atom."""


def select_atoms(topology: mdtraj.Topology, selection: str, what: str = "selection") -> np.ndarray:
    """Indices of the atoms matching an mdtraj DSL ``selection``.

    Parameters
    ----------
    topology
        The mdtraj topology to select from.
    selection
        mdtraj selection string, e.g. ``"backbone"`` or ``"name CA and resid 0 to 5"``.
    what
        Name of the setting the string came from (e.g. ``"cv.selection"``), used in errors.

    Raises
    ------
    SelectionError
        If the string does not parse or matches no atom.
    """
    try:
        indices = topology.select(selection)
    except Exception as exc:  # mdtraj raises ValueError/ParseException/AttributeError for bad strings
        raise SelectionError(f"{what}: cannot parse atom selection {selection!r}: {exc}") from None
    if len(indices) == 0:
        raise SelectionError(
            f"{what}: atom selection {selection!r} matches no atom "
            f"(topology has {topology.n_atoms} atoms in {topology.n_residues} residues)"
        )
    return np.asarray(indices, dtype=np.int64)
