"""Built-in and custom systems: build, minimise, run, and fail clearly on bad input."""

from __future__ import annotations

import math

import mdtraj
import numpy as np
import openmm
import pytest
from openmm import unit

from aesample.platforms import TINY_SYSTEM_ATOMS, select_platform
from aesample.selection import SelectionError, select_atoms
from aesample.systems import SYSTEMS, SystemError, build_system, systems_dir


def _minimise_and_run(ms, steps=1000):
    platform, props = select_platform("auto", ms.n_atoms)
    integrator = openmm.LangevinMiddleIntegrator(ms.temperature, 1.0, 0.002)
    integrator.setRandomNumberSeed(7)
    context = openmm.Context(ms.system, integrator, platform, props)
    if ms.box is not None:
        context.setPeriodicBoxVectors(*ms.box)
    context.setPositions(ms.positions)
    openmm.LocalEnergyMinimizer.minimize(context, 10.0, 500)
    context.setVelocitiesToTemperature(ms.temperature, 7)
    integrator.step(steps)
    state = context.getState(getEnergy=True, getPositions=True)
    pot = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    kin = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
    return pot, kin, state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)


@pytest.mark.parametrize("name", list(SYSTEMS))
def test_builtin_system_runs(name):
    ms = build_system(name)
    pot, kin, pos = _minimise_and_run(ms)
    assert math.isfinite(pot) and math.isfinite(kin)
    # Equipartition sanity: kinetic energy of the right order for the temperature.
    dof = 3 * ms.n_atoms - ms.system.getNumConstraints()
    expected = 0.5 * dof * unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin) * ms.temperature
    assert 0.5 * expected < kin < 1.5 * expected
    if name.startswith("chignolin"):
        # The hairpin survives a short run: C-alpha RMSD to the crystal structure stays small.
        ref = mdtraj.load(str(systems_dir() / "chignolin_cln025_5awl.pdb"))
        ca = ref.topology.select("name CA")
        solute = ms.solute_indices()
        traj = mdtraj.Trajectory(pos[solute][None], ms.mdtraj_topology.subset(solute))
        rmsd = mdtraj.rmsd(traj, ref, atom_indices=ca)[0]
        assert rmsd < 0.2, f"chignolin lost its hairpin: CA RMSD {rmsd:.3f} nm"


def test_builtin_settings():
    adp = build_system("alanine-dipeptide")
    assert adp.n_atoms == 22 and not adp.periodic and adp.temperature == 300.0
    assert adp.system.getNumConstraints() == 12  # HBonds
    water = build_system("alanine-dipeptide-water")
    assert water.periodic
    nb = next(f for f in water.system.getForces() if isinstance(f, openmm.NonbondedForce))
    assert nb.getNonbondedMethod() == openmm.NonbondedForce.PME
    # >= 1 nm from any solute atom to every box face (cubic box, solute centred by Modeller).
    solute = water.positions[water.solute_indices()]
    lo, hi = solute.min(axis=0), solute.max(axis=0)
    assert np.allclose(np.diag(water.box), water.box[0, 0]) and np.count_nonzero(water.box - np.diag(np.diag(water.box))) == 0
    assert water.box[0, 0] >= (hi - lo).max() + 2.0 - 1e-6
    chig = build_system("chignolin")
    assert chig.temperature == 340.0 and chig.n_atoms == 166
    assert any(isinstance(f, openmm.GBSAOBCForce) or "GB" in type(f).__name__ or isinstance(f, openmm.CustomGBForce)
               for f in chig.system.getForces())
    cw = build_system("chignolin-water")
    charge = sum(
        f.getParticleParameters(i)[0].value_in_unit(unit.elementary_charge)
        for f in cw.system.getForces() if isinstance(f, openmm.NonbondedForce) for i in range(cw.n_atoms)
    )
    assert abs(charge) < 1e-4  # neutralised (CLN025 has net charge -2 at pH 7)


def test_custom_pdb_fills_missing_hydrogens(tmp_path):
    # Strip the hydrogens of alanine dipeptide: PDBFixer must put all 12 back.
    src = (systems_dir() / "alanine_dipeptide_vacuum.pdb").read_text().splitlines()
    heavy = [l for l in src if not (l.startswith("ATOM") and l[12:16].strip().lstrip("123").startswith("H"))]
    pdb = tmp_path / "heavy.pdb"
    pdb.write_text("\n".join(heavy) + "\n")
    ms = build_system(pdb=pdb)
    assert ms.name == "custom" and ms.n_atoms == 22
    pot, _, _ = _minimise_and_run(ms, steps=200)
    assert math.isfinite(pot)


def test_custom_pdb_unknown_residue(tmp_path):
    src = (systems_dir() / "alanine_dipeptide_vacuum.pdb").read_text().splitlines()
    body = [l for l in src if l.startswith("ATOM")]
    body.append("HETATM   23  C1  LIG B  42       9.000   9.000   9.000  1.00  0.00           C")
    pdb = tmp_path / "ligand.pdb"
    pdb.write_text("\n".join(body) + "\nEND\n")
    with pytest.raises(SystemError, match=r"ligand.pdb: force field amber14-all.xml cannot parametrise residue LIG 42 \(chain B\)"):
        build_system(pdb=pdb)


def test_missing_pdb_and_unknown_name(tmp_path):
    with pytest.raises(SystemError, match=r"system.pdb: file not found: .*nope.pdb"):
        build_system(pdb=tmp_path / "nope.pdb")
    with pytest.raises(SystemError, match=r"system.name: unknown system 'water-box'"):
        build_system("water-box")


def test_empty_selection_shows_string(adp):
    with pytest.raises(SelectionError) as exc:
        select_atoms(adp.mdtraj_topology, "resname GLY and name CA", what="cv.selection")
    assert str(exc.value) == (
        "cv.selection: atom selection 'resname GLY and name CA' matches no atom (topology has 22 atoms in 3 residues)"
    )
    with pytest.raises(SelectionError, match=r"cv.selection: cannot parse atom selection 'name CA and and'"):
        select_atoms(adp.mdtraj_topology, "name CA and and", what="cv.selection")
    assert len(select_atoms(adp.mdtraj_topology, SYSTEMS["alanine-dipeptide"].selection)) == 10  # the seed's 30 inputs


def test_platform_rules():
    platform, props = select_platform("auto", n_atoms=22)
    if platform.getName() not in ("CUDA", "OpenCL"):
        assert platform.getName() == "Reference" and props == {}
        assert select_platform("auto", n_atoms=TINY_SYSTEM_ATOMS * 10)[0].getName() == "CPU"
    else:
        assert props["Precision"] == "mixed"
    with pytest.raises(ValueError, match=r"system.platform: platform 'Metal' is not available here \(available: Reference"):
        select_platform("Metal")


def test_observables_hook_of_the_system_recipe(adp):
    """The loop's per-system observables come from the recipe (not from name checks in the stages)."""
    from aesample.analysis import phi_psi
    from aesample.systems import chignolin_folding_observables, dipeptide_observables

    assert SYSTEMS["alanine-dipeptide"].observables is dipeptide_observables
    assert SYSTEMS["alanine-dipeptide-water"].observables is dipeptide_observables
    assert SYSTEMS["chignolin"].observables is chignolin_folding_observables
    assert adp.observables is dipeptide_observables
    traj = mdtraj.Trajectory(adp.positions[None].astype(np.float32), adp.mdtraj_topology)
    obs = adp.observables(traj)
    np.testing.assert_allclose(np.column_stack([obs["phi"], obs["psi"]]), phi_psi(traj))
    custom = build_system(pdb=systems_dir() / "alanine_dipeptide_vacuum.pdb")  # an ACE-ALA-NME by its residues
    assert custom.name == "custom" and custom.observables is dipeptide_observables
