"""Molecular systems: the built-in ones and custom PDB files, parametrised for OpenMM.

``build_system(name)`` returns a :class:`MolecularSystem` bundling the OpenMM
``System``, its ``Topology``, starting positions and the physical settings that go
with them (temperature, periodicity, default CV atom selection).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import mdtraj
import numpy as np
import openmm
from openmm import app, unit

from .selection import HEAVY_PEPTIDE, default_selection

__all__ = ["SYSTEMS", "SystemSpec", "MolecularSystem", "SystemError", "build_system", "systems_dir",
           "dipeptide_observables", "chignolin_folding_observables"]

#: Per-frame structural observables of a system: frames (molecule atoms) -> {name: (n_frames,) array}.
Observables = Callable[[mdtraj.Trajectory], "dict[str, np.ndarray]"]


class SystemError(ValueError):  # noqa: A001 - named for the concept, not the builtin OSError alias
    """A system cannot be built: unknown name, missing/bad PDB, or unparametrisable residue."""


def systems_dir() -> Path:
    """Folder holding the built-in structures: the package data ``aesample/data/`` (installed with the package)."""
    return Path(__file__).resolve().parent / "data"


def dipeptide_observables(traj: mdtraj.Trajectory) -> dict[str, np.ndarray]:
    """Backbone dihedrals of a dipeptide, radians: ``{"phi": (n,), "psi": (n,)}``.

    The loop's analysis reports the named-basin Delta F (C7ax vs the rest), transitions and the (phi, psi) plots
    for systems whose observables include ``phi`` and ``psi``.
    """
    from .analysis import phi_psi

    angles = phi_psi(traj)
    return {"phi": angles[:, 0], "psi": angles[:, 1]}


def chignolin_folding_observables(traj: mdtraj.Trajectory) -> dict[str, np.ndarray]:
    """Folding observables of CLN025 against the built-in folded structure (nm):
    ``rmsd_ca``, ``rg``, ``hbond_d3o_t6n``, ``hbond_d3n_t8o`` (see :func:`aesample.analysis.chignolin_observables`).
    """
    from .analysis import chignolin_observables as folding

    return folding(traj, mdtraj.load(str(systems_dir() / "chignolin_cln025_5awl.pdb")))


@dataclass(frozen=True)
class SystemSpec:
    """Recipe of a built-in system.

    ``observables``: per-frame structural observables the loop's analysis reports for this system (the hook that
    replaces checks of the system's name): :func:`dipeptide_observables` gives ``phi``/``psi``,
    :func:`chignolin_folding_observables` the C-alpha RMSD to the folded structure and its companions.
    """

    pdb: str
    forcefield: tuple[str, ...]
    solvent: str  # vacuum | implicit | explicit
    temperature: float  # K
    selection: str  # default CV input atoms (mdtraj DSL)
    description: str
    implicit_model: str = "gbn2"
    observables: Optional[Observables] = None


SYSTEMS: dict[str, SystemSpec] = {
    "alanine-dipeptide": SystemSpec(
        "alanine_dipeptide_vacuum.pdb", ("amber14-all.xml",), "vacuum", 300.0, HEAVY_PEPTIDE,
        "ACE-ALA-NME, Amber ff14SB, vacuum, no cutoff, HBonds, 300 K", observables=dipeptide_observables,
    ),
    "alanine-dipeptide-water": SystemSpec(
        "alanine_dipeptide_vacuum.pdb", ("amber14-all.xml", "amber14/tip3p.xml"), "explicit", 300.0, HEAVY_PEPTIDE,
        "ACE-ALA-NME, Amber ff14SB, TIP3P cubic box (1 nm padding), PME, HBonds, 300 K",
        observables=dipeptide_observables,
    ),
    "chignolin": SystemSpec(
        "chignolin_cln025_5awl.pdb", ("amber14-all.xml", "implicit/gbn2.xml"), "implicit", 340.0, "name CA",
        "CLN025 (YYDPETGTWY) from 5AWL + PDBFixer H, Amber ff14SB, GBn2 implicit solvent, 340 K",
        observables=chignolin_folding_observables,
    ),
    "chignolin-water": SystemSpec(
        "chignolin_cln025_5awl.pdb", ("amber14-all.xml", "amber14/tip3p.xml"), "explicit", 340.0, "name CA",
        "CLN025 in TIP3P with neutralising Na+/Cl-, PME, HBonds, 340 K", observables=chignolin_folding_observables,
    ),
}

_CONSTRAINTS = {"none": None, "HBonds": app.HBonds, "AllBonds": app.AllBonds, "HAngles": app.HAngles}


@dataclass
class MolecularSystem:
    """A parametrised system ready for simulation.

    Attributes
    ----------
    name
        Built-in name or ``"custom"``.
    system
        The OpenMM ``System``.
    topology
        The OpenMM ``Topology`` (solvent included).
    positions
        Starting positions, numpy ``(N, 3)`` float64, nm (not minimised).
    temperature
        Simulation temperature, K.
    periodic
        Whether the system uses periodic boundary conditions.
    box
        Periodic box vectors ``(3, 3)`` in nm, or ``None``.
    selection
        Default mdtraj selection for the CV input atoms.
    source
        The PDB file the solute came from.
    observables
        Per-frame structural observables reported by the loop (:attr:`SystemSpec.observables`; a custom ACE-ALA-NME
        gets :func:`dipeptide_observables`), or None.
    """

    name: str
    system: openmm.System
    topology: app.Topology
    positions: np.ndarray
    temperature: float
    periodic: bool
    box: Optional[np.ndarray]
    selection: str
    source: Path
    solvent: str = "vacuum"
    observables: Optional[Observables] = field(default=None, repr=False)
    mdtraj_topology: mdtraj.Topology = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.mdtraj_topology = mdtraj.Topology.from_openmm(self.topology)

    @property
    def n_atoms(self) -> int:
        """Number of particles of the System."""
        return self.system.getNumParticles()

    def solute_indices(self) -> np.ndarray:
        """Indices of the atoms that are neither water nor ions."""
        return self.mdtraj_topology.select("not water and not (resname NA or resname CL or resname K)")

    def positions_from_pdb(self, path: Path | str, what: str = "structure") -> np.ndarray:
        """Starting positions (N, 3) nm read from a PDB file with this system's atoms, in its order.

        A file with only the solute atoms of a solvated system keeps the built solvent: the solute is placed
        at the built solute's centre. ``what`` names the setting in error messages (e.g.
        ``"loop.initial_structures"``). Raises ValueError when the file cannot be read or its atom count matches
        neither the system nor its solute.
        """
        path = Path(path)
        check_pdb_file(path, what=what)
        try:
            pos = np.array(app.PDBFile(str(path)).getPositions(asNumpy=True).value_in_unit(openmm.unit.nanometer))
        except Exception as exc:
            raise ValueError(f"{what}: cannot read {path}: {exc}") from None
        n_solute = len(self.solute_indices())
        if pos.shape[0] == self.n_atoms:
            return pos
        if pos.shape[0] == n_solute and self.periodic:
            full = self.positions.copy()
            solute = self.solute_indices()
            full[solute] = pos - (pos.mean(axis=0) - full[solute].mean(axis=0))
            return full
        raise ValueError(f"{what}: {path} has {pos.shape[0]} atoms but the system has {self.n_atoms}"
                         + (f" ({n_solute} solute atoms)" if self.periodic else ""))


def check_pdb_file(path: Path, what: str = "") -> None:
    """Raise :class:`SystemError` when ``path`` is not a PDB file (no ATOM/HETATM record; PDBx/mmCIF by suffix
    pass through), instead of the parser's own message ("list index out of range")."""
    path = Path(path)
    if path.suffix.lower() in (".cif", ".pdbx", ".mmcif"):
        return
    prefix = f"{what}: " if what else ""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 20)
    except OSError as exc:
        raise SystemError(f"{prefix}{path}: cannot read: {exc.strerror}") from None
    records = (line[:6].decode("ascii", "replace") for line in head.splitlines())
    if not any(r.startswith(("ATOM  ", "HETATM")) or r.rstrip() in ("ATOM", "HETATM") for r in records):
        raise SystemError(f"{prefix}{path}: not a PDB file (no ATOM or HETATM record in it)")


def _fix_pdb(path: Path, ph: float):
    """Fill missing heavy atoms and hydrogens with PDBFixer; returns (topology, positions)."""
    from pdbfixer import PDBFixer

    check_pdb_file(path)
    try:
        fixer = PDBFixer(filename=str(path))
    except Exception as exc:
        raise SystemError(f"{path}: cannot read PDB file: {exc}") from None
    if fixer.topology.getNumAtoms() == 0:
        raise SystemError(f"{path}: no atoms found in the PDB file")
    fixer.findMissingResidues()
    fixer.missingResidues = {}  # do not invent missing loops: only fill atoms of residues that exist
    fixer.findMissingAtoms()
    fixer.addMissingAtoms()
    fixer.addMissingHydrogens(ph)
    return fixer.topology, fixer.positions


def _check_templates(forcefield: app.ForceField, topology: app.Topology, path: Path, ff_files) -> None:
    unmatched = forcefield.getUnmatchedResidues(topology)
    if unmatched:
        res = unmatched[0]
        others = f" (and {len(unmatched) - 1} more)" if len(unmatched) > 1 else ""
        raise SystemError(
            f"{path}: force field {', '.join(ff_files)} cannot parametrise residue {res.name} {res.id} "
            f"(chain {res.chain.id}){others}"
        )


def build_system(
    name: str = "alanine-dipeptide",
    *,
    pdb: str | Path | None = None,
    forcefield: list[str] | tuple[str, ...] | None = None,
    solvent: str | None = None,
    implicit_model: str = "gbn2",
    water_model: str = "tip3p",
    padding: float = 1.0,
    ionic_strength: float = 0.0,
    ph: float = 7.0,
    temperature: float | None = None,
    nonbonded_cutoff: float = 1.0,
    constraints: str = "HBonds",
) -> MolecularSystem:
    """Build a built-in system by name, or a custom one from a PDB file.

    Parameters
    ----------
    name
        One of :data:`SYSTEMS`, or ``"custom"`` (implied when ``pdb`` is given).
    pdb
        Custom PDB file; PDBFixer adds missing heavy atoms and hydrogens at ``ph``.
    forcefield
        Force-field XML files for a custom PDB (default ``["amber14-all.xml"]``).
    solvent
        ``vacuum``, ``implicit`` or ``explicit`` for a custom PDB (default ``vacuum``).
    implicit_model, water_model
        OpenMM file stems (``implicit/<model>.xml``, ``amber14/<model>.xml``).
    padding
        Solvent padding, nm (cubic box).
    ionic_strength
        Added salt, mol/L; the box is always neutralised.
    temperature
        K; default is the system's own.
    nonbonded_cutoff
        nm, for PME in explicit solvent.
    constraints
        ``none``, ``HBonds``, ``AllBonds`` or ``HAngles``.

    Raises
    ------
    SystemError
        Unknown name, missing or unreadable PDB, or a residue the force field cannot parametrise.
    """
    if pdb is not None:
        path = Path(pdb)
        if not path.is_file():
            raise SystemError(f"system.pdb: file not found: {path}")
        spec = SystemSpec(
            pdb=str(path), forcefield=tuple(forcefield or ("amber14-all.xml",)), solvent=solvent or "vacuum",
            temperature=300.0, selection="", description=f"custom system from {path}",
            implicit_model=implicit_model,
        )
        name = "custom"
        topology, positions = _fix_pdb(path, ph)
    else:
        if name not in SYSTEMS:
            raise SystemError(f"system.name: unknown system '{name}' (available: {', '.join(SYSTEMS)}, or set system.pdb)")
        spec = SYSTEMS[name]
        path = systems_dir() / spec.pdb
        if not path.is_file():
            raise SystemError(f"built-in structure missing: {path} (is the aesample installation complete?)")
        pdbfile = app.PDBFile(str(path))
        topology, positions = pdbfile.topology, pdbfile.positions
    if constraints not in _CONSTRAINTS:
        raise SystemError(f"system.constraints: invalid value {constraints!r} (allowed: {', '.join(_CONSTRAINTS)})")

    ff_files = list(spec.forcefield)
    if spec.solvent == "implicit" and not any(f.startswith("implicit/") for f in ff_files):
        ff_files.append(f"implicit/{spec.implicit_model}.xml")
    if spec.solvent == "explicit" and not any("tip" in f or "spce" in f or "opc" in f for f in ff_files):
        ff_files.append(f"amber14/{water_model}.xml")
    try:
        ff = app.ForceField(*ff_files)
    except Exception as exc:
        raise SystemError(f"system.forcefield: cannot load {ff_files}: {exc}") from None

    modeller = app.Modeller(topology, positions)
    if spec.solvent != "explicit":
        modeller.deleteWater()  # crystal waters make no sense in vacuum or implicit solvent
    _check_templates(ff, modeller.topology, path, ff_files)

    if spec.solvent == "explicit":
        model = "tip3p" if water_model in ("tip3p", "tip3pfb") else water_model
        # Padding as users mean it: at least `padding` from the solute to every box face
        # (OpenMM's own `padding=` only guarantees it between periodic images).
        xyz = np.array(modeller.positions.value_in_unit(unit.nanometer))
        diameter = 2.0 * np.linalg.norm(xyz - xyz.mean(axis=0), axis=1).max()
        width = diameter + 2.0 * padding
        modeller.addSolvent(
            ff, model=model, boxSize=openmm.Vec3(width, width, width) * unit.nanometer,
            ionicStrength=ionic_strength * unit.molar, neutralize=True,
        )
        kwargs = dict(nonbondedMethod=app.PME, nonbondedCutoff=nonbonded_cutoff * unit.nanometer, rigidWater=True)
    else:
        kwargs = dict(nonbondedMethod=app.NoCutoff)
    try:
        system = ff.createSystem(modeller.topology, constraints=_CONSTRAINTS[constraints], **kwargs)
    except ValueError as exc:
        raise SystemError(f"{path}: {exc}") from None

    pos = np.array(modeller.positions.value_in_unit(unit.nanometer), dtype=np.float64)
    periodic = system.usesPeriodicBoundaryConditions()
    box = None
    if periodic:
        vectors = modeller.topology.getPeriodicBoxVectors()
        box = np.array([v.value_in_unit(unit.nanometer) for v in vectors], dtype=np.float64)
        system.setDefaultPeriodicBoxVectors(*vectors)
    ms = MolecularSystem(
        name=name, system=system, topology=modeller.topology, positions=pos,
        temperature=float(temperature if temperature is not None else spec.temperature),
        periodic=periodic, box=box, selection=spec.selection, source=path, solvent=spec.solvent,
        observables=spec.observables,
    )
    if pdb is not None:  # a custom structure: choose the CV atoms by its size
        ms.selection = default_selection(ms.mdtraj_topology)
        protein = [r.name for r in ms.mdtraj_topology.residues if r.is_protein]
        if protein == ["ACE", "ALA", "NME"]:
            ms.observables = dipeptide_observables
    return ms


def system_from_config(cfg) -> MolecularSystem:
    """Build the system described by a :class:`aesample.config.SystemConfig`."""
    return build_system(
        cfg.name, pdb=cfg.pdb, forcefield=cfg.forcefield, solvent=cfg.solvent, implicit_model=cfg.implicit_model,
        water_model=cfg.water_model, padding=cfg.padding, ionic_strength=cfg.ionic_strength, ph=cfg.ph,
        temperature=cfg.temperature, nonbonded_cutoff=cfg.nonbonded_cutoff, constraints=cfg.constraints,
    )
