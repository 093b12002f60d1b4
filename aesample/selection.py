"""Atom selections in mdtraj's selection language, with errors that show the selection."""

from __future__ import annotations

import mdtraj
import numpy as np

__all__ = ["HEAVY_PEPTIDE", "SelectionError", "default_selection", "select_atoms"]

#: All heavy atoms of the peptide (10 atoms = 30 inputs for alanine dipeptide). The side chain and
#: carbonyl oxygens make the C7ax basin (phi > 0) distinct from C7eq in the code of an autoencoder
#: trained on C7eq/C5 frames only; with the 8 backbone heavy atoms it overlaps C7eq and eABF along
#: the learned CV never reaches it (benchmarks/LOOP_RESULTS.md).
HEAVY_PEPTIDE = "protein and not element H"


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

    Small peptides (<= 4 protein residues, e.g. alanine dipeptide): all heavy atoms of the peptide,
    :data:`HEAVY_PEPTIDE` (10 atoms = 30 inputs for alanine dipeptide, the seed network 30-40-2-40-30).
    Larger proteins: the alpha carbons, ``"name CA"``. Water and ions do not count as residues here.
    """
    n_protein = sum(1 for residue in topology.residues if residue.is_protein)
    return HEAVY_PEPTIDE if n_protein <= 4 else "name CA"
