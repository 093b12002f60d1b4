"""Atom selections in mdtraj's selection language, with errors that show the selection."""

from __future__ import annotations

import mdtraj
import numpy as np

__all__ = ["SelectionError", "default_selection", "select_atoms"]


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


def default_selection(topology: mdtraj.Topology) -> str:
    """Default CV input atoms for a topology (mdtraj DSL).

    Small peptides (<= 4 protein residues, e.g. alanine dipeptide): the heavy backbone atoms,
    ``"backbone and not element H"`` (8 atoms = 24 inputs for alanine dipeptide, the seed network).
    Larger proteins: the alpha carbons, ``"name CA"``. Water and ions do not count as residues here.
    """
    n_protein = sum(1 for residue in topology.residues if residue.is_protein)
    return "backbone and not element H" if n_protein <= 4 else "name CA"
