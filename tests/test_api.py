"""The public Python API (issue 15): names importable from ``aesample``, ExtendedABF used like
``app.Metadynamics`` with an OpenMM Simulation and its reporters, and the README's script example."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import mdtraj
import numpy as np
import openmm
import pytest
from openmm import app, unit

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "eabf_phi.py"


def test_public_names_import_lazily():
    code = ("import sys, aesample; assert 'torch' not in sys.modules and 'openmm' not in sys.modules; "
            "from aesample import ExtendedABF, EABFState, LoopDriver, export_cv, load_cv; "
            "print(ExtendedABF.__module__, EABFState.__module__, LoopDriver.__module__, export_cv.__module__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["aesample.eabf", "aesample.eabf", "aesample.driver", "aesample.export"]


def test_unknown_public_name():
    import aesample

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        aesample.Nope  # noqa: B018


def _phi_eabf(ms, system, **kwargs):
    from aesample import ExtendedABF, parse_cv_spec

    return ExtendedABF(system, parse_cv_spec("phi", ms.topology), -math.pi, math.pi, 12, 200.0,
                       positions=ms.positions, **kwargs)


def test_force_group_is_a_free_one(adp):
    from aesample.eabf import EABFError

    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(adp.system))
    for i, force in enumerate(system.getForces()):
        force.setForceGroup(31 if i == 0 else 0)  # the highest group is taken
    e = _phi_eabf(adp, system)
    assert e.forceGroup == 30
    assert system.getForce(e.forceIndex).getForceGroup() == 30
    full = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(adp.system))
    for i, force in enumerate(full.getForces()):
        force.setForceGroup(i % 32)
    for g in range(full.getNumForces(), 32):
        extra = openmm.CustomExternalForce("0")
        extra.setForceGroup(g)
        full.addForce(extra)
    with pytest.raises(EABFError, match="every force group 0..31"):
        _phi_eabf(adp, full)


def test_simulation_reporters_and_free_energy(adp, tmp_path):
    """Metadynamics-like use: a Simulation with a molecule-only DCD, the COLVAR and a restartable checkpoint."""
    from aesample import ColvarReporter, EABFCheckpointReporter, EABFState
    from aesample.outputs import read_colvar

    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(adp.system))
    e = _phi_eabf(adp, system, czarBins=120)
    integ = openmm.LangevinMiddleIntegrator(300.0, 5.0, 0.002)
    integ.setRandomNumberSeed(7)
    sim = app.Simulation(adp.topology, system, integ, openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(e.extendPositions(adp.positions))
    sim.reporters += [app.DCDReporter(str(tmp_path / "t.dcd"), 10, atomSubset=e.moleculeAtoms),
                      ColvarReporter(tmp_path / "COLVAR", e, 10),
                      EABFCheckpointReporter(tmp_path / "run.chk", e, 20)]
    with pytest.raises(ValueError, match="no accumulators read yet"):
        e.getFreeEnergy()
    e.step(sim, 40)
    sim.reporters[1].close()
    traj = mdtraj.load(str(tmp_path / "t.dcd"), top=adp.mdtraj_topology)
    assert traj.n_frames == 4 and traj.n_atoms == adp.n_atoms
    _, colvar = read_colvar(tmp_path / "COLVAR")
    assert colvar.shape == (4, 4)
    np.testing.assert_allclose(e.getCollectiveVariables(sim), e.getCollectiveVariables(sim.context))
    np.testing.assert_allclose(colvar[-1, 1], e.getCollectiveVariables(sim)[0], atol=1e-9)
    f = e.getFreeEnergy()
    assert f.unit == unit.kilojoule_per_mole
    state = e.getState(sim)
    expected = state.czar_free_energy(300.0)
    np.testing.assert_allclose(f.value_in_unit(unit.kilojoule_per_mole), expected, equal_nan=True)
    assert np.isfinite(expected).sum() >= 1
    np.testing.assert_allclose(e.getFreeEnergy(sim, estimator="naive").value_in_unit(unit.kilojoule_per_mole),
                               state.naive_free_energy(), equal_nan=True)
    # the checkpoint at step 40 restores the accumulators of step 40
    saved = EABFState.load(tmp_path / "run.chk.eabf.npz")
    assert saved.n_samples == state.n_samples == 41
    np.testing.assert_array_equal(saved.count, state.count)
    assert (tmp_path / "run.chk").stat().st_size > 0


def test_free_energy_needs_a_temperature_without_one_from_the_integrator(adp):
    from aesample.eabf import EABFError
    from aesample.md import mts_langevin_integrator

    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(adp.system))
    e = _phi_eabf(adp, system)
    others = sorted({f.getForceGroup() for f in system.getForces()} - {e.forceGroup})
    integ = mts_langevin_integrator(300.0, 5.0, 0.002, 1, others, e.forceGroup)
    context = openmm.Context(system, integ, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(e.extendPositions(adp.positions))
    integ.step(5)
    with pytest.raises(EABFError, match="temperature"):
        e.getFreeEnergy(context)
    e.temperature = 300.0
    assert e.getFreeEnergy(context).shape == (12,)


def _readme_python_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README: no ```python block under '## Python API'"
    return match.group(1)


def test_readme_script_is_the_example():
    assert _readme_python_block().strip() == EXAMPLE.read_text().strip()


def test_readme_script_example_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLE), str(tmp_path / "out"), "400"], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "phi now:" in proc.stdout and "kJ/mol" in proc.stdout
    traj = mdtraj.load(str(tmp_path / "out" / "trajectory.dcd"), top=str(ROOT / "aesample" / "data" /
                                                                          "alanine_dipeptide_vacuum.pdb"))
    assert traj.n_frames == 100 and traj.n_atoms == 22
    for name in ("COLVAR", "checkpoint.chk", "checkpoint.chk.eabf.npz"):
        assert (tmp_path / "out" / name).is_file()
