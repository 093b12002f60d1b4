"""Tests of aesample.eabf: forces, sampling gate, read-out, restore, input validation, analytic free energies."""
import math

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit

from aesample import cvs
from aesample.eabf import EABFError, EABFState, ExtendedABF, decode_readout, encode_readout_numpy

PDB = "aesample/data/alanine_dipeptide_vacuum.pdb"
REF = openmm.Platform.getPlatformByName("Reference")


def _alanine():
    pdb = app.PDBFile(PDB)
    ff = app.ForceField("amber14-all.xml")
    system = ff.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds)
    pos = np.array(pdb.positions.value_in_unit(unit.nanometer))
    return system, pdb.topology, pos


def _group_energy_forces(ctx, group):
    st = ctx.getState(getEnergy=True, getForces=True, groups={group})
    return st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole), np.asarray(
        st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    )


def _fd_check(system, eabf, positions, rng, n_checks=12, h=1e-5):
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), REF)
    eabf.setSampling(ctx, False)  # no samples -> no (non-conservative) ABF bias: forces are -grad E
    ctx.setPositions(positions)
    _, forces = _group_energy_forces(ctx, eabf.forceGroup)
    atoms = list(eabf.cv.atom_indices.tolist()) + list(eabf.extendedIndices)
    checked = 0
    for a in rng.permutation(atoms)[:n_checks]:
        for k in range(3):
            p = positions.copy()
            p[a, k] += h
            ctx.setPositions(p)
            ep, _ = _group_energy_forces(ctx, eabf.forceGroup)
            p[a, k] -= 2 * h
            ctx.setPositions(p)
            em, _ = _group_energy_forces(ctx, eabf.forceGroup)
            fd = -(ep - em) / (2 * h)
            assert forces[a, k] == pytest.approx(fd, rel=1e-5, abs=1e-4), (a, k, forces[a, k], fd)
            checked += 1
    assert checked > 0
    # atoms that the CV does not read feel nothing
    others = np.setdiff1d(np.arange(eabf.n_molecule), eabf.cv.atom_indices.numpy())
    assert np.all(forces[others] == 0.0)
    return forces


@pytest.mark.parametrize("jacobian", [True, False], ids=["closed-form", "autograd"])
@pytest.mark.parametrize("spec", ["phi", "phi,psi", "phi;distance:0,10"])
def test_coupling_forces_match_finite_differences(spec, jacobian):
    system, top, pos = _alanine()
    rng = np.random.default_rng(1)
    pos = pos + rng.normal(0, 0.01, pos.shape)
    cv = cvs.parse_cv_spec(spec, top)
    d = cv.cv_dim
    gmin = [-math.pi] * d
    gmax = [math.pi] * d
    if "distance" in spec:
        gmin[1], gmax[1] = 0.2, 0.4  # put lambda outside the grid below: walls are tested too
    e = ExtendedABF(system, cv, gmin, gmax, [24] * d, [300.0] * d, positions=pos, cvJacobian=jacobian)
    assert e.usesCVJacobian == jacobian
    full = e.extendPositions(pos)
    full[e.extendedIndices, 0] += rng.normal(0, 0.3, d)  # lambda away from xi
    if "distance" in spec:
        full[e.extendedIndices[1], 0] = 0.6  # above gridMax: wall active
    full[e.extendedIndices, 1] += 0.05  # pins active
    forces = _fd_check(system, e, full, rng)
    # the force on lambda is the coupling kappa (xi - lambda) (+ wall), check its sign directly for the first CV
    xi = e.evaluateCV(pos)
    lam = full[e.extendedIndices[0], 0]
    diff = (xi[0] - lam + math.pi) % (2 * math.pi) - math.pi
    assert forces[e.extendedIndices[0], 0] == pytest.approx(300.0 * diff, rel=1e-9)


def test_molecular_energy_unchanged_by_extended_particles():
    system, top, pos = _alanine()
    ref_ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), REF)
    ref_ctx.setPositions(pos)
    e_ref, f_ref = _group_energy_forces(ref_ctx, 0)
    e = ExtendedABF(system, cvs.parse_cv_spec("phi,psi", top), [-math.pi] * 2, [math.pi] * 2, 10, 100.0,
                    positions=pos)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), REF)
    full = e.extendPositions(pos)
    full[e.extendedIndices, 0] = [0.3, 0.2]  # near molecule atoms: must still not interact
    ctx.setPositions(full)
    e_new, f_new = _group_energy_forces(ctx, 0)
    assert e_new == pytest.approx(e_ref, abs=1e-8)
    np.testing.assert_allclose(f_new[: len(pos)], f_ref, atol=1e-8)
    np.testing.assert_array_equal(f_new[len(pos):], 0.0)


def _run_alanine(nsteps, probe_between_steps, seed=5):
    system, top, pos = _alanine()
    e = ExtendedABF(system, cvs.parse_cv_spec("phi,psi", top), [-math.pi] * 2, [math.pi] * 2, 12, 200.0,
                    positions=pos, fullSamples=20)
    integ = openmm.LangevinMiddleIntegrator(300.0, 5.0, 0.002)
    integ.setRandomNumberSeed(seed)
    ctx = openmm.Context(system, integ, REF)
    ctx.setPositions(e.extendPositions(pos))
    ctx.setVelocitiesToTemperature(300.0, seed)
    if probe_between_steps:
        for i in range(nsteps):
            integ.step(1)
            ctx.getState(getForces=True, getEnergy=True)
            ctx.getState(getForces=True, groups={e.forceGroup})
            if i % 7 == 0:
                e.getInstantaneous(ctx)
                e.getState(ctx)
    else:
        integ.step(nsteps)
    ctx.getState(getForces=True)  # both runs: sample the final configuration once
    return e, ctx


def test_extra_evaluations_do_not_add_samples():
    n = 150
    e1, c1 = _run_alanine(n, probe_between_steps=False)
    e2, c2 = _run_alanine(n, probe_between_steps=True)
    s1, s2 = e1.getState(c1), e2.getState(c2)
    assert s1.n_samples == n + 1 and s2.n_samples == n + 1
    assert s1.count.sum() == n + 1
    for name in ("count", "grad", "zcount", "czar", "last"):
        np.testing.assert_array_equal(getattr(s1, name), getattr(s2, name), err_msg=name)
    # read-out itself never samples
    s3 = e1.getState(c1)
    assert s3.n_samples == s1.n_samples
    p1 = c1.getState(getPositions=True).getPositions(asNumpy=True)._value
    p2 = c2.getState(getPositions=True).getPositions(asNumpy=True)._value
    np.testing.assert_array_equal(p1, p2)


def test_sampling_switch_off():
    system, top, pos = _alanine()
    e = ExtendedABF(system, cvs.parse_cv_spec("phi", top), -math.pi, math.pi, 12, 200.0, positions=pos)
    integ = openmm.LangevinMiddleIntegrator(300.0, 5.0, 0.002)
    ctx = openmm.Context(system, integ, REF)
    ctx.setPositions(e.extendPositions(pos))
    e.setSampling(ctx, False)
    openmm.LocalEnergyMinimizer.minimize(ctx, 1.0, 50)
    integ.step(20)
    assert e.getState(ctx).n_samples == 0
    e.setSampling(ctx, True)
    integ.step(20)
    assert e.getState(ctx).n_samples == 20


def test_readout_encoding_is_bit_exact():
    vals = np.array([0.0, -0.0, 1.0, -1.5, 1e-300, -3.3e-310, 1.7976931348623157e308, 123456789.123456789,
                     -2.0 ** -1074, math.pi, 1e300])
    np.testing.assert_array_equal(decode_readout(encode_readout_numpy(vals)), vals)
    enc = encode_readout_numpy(vals)
    assert np.all(enc >= 0) and np.all(enc < 2 ** 22)  # exact in float32 and CUDA fixed point


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_initial_state_round_trips_through_the_device(platform):
    system, top, pos = _alanine()
    rng = np.random.default_rng(3)
    shape = (7, 5)
    st = EABFState(
        grid_min=np.array([-math.pi, -math.pi]), grid_max=np.array([math.pi, math.pi]), bins=np.array(shape),
        periodic=np.array([True, True]), kappa=np.array([100.0, 100.0]),
        count=rng.integers(0, 10 ** 6, shape).astype(float), grad=rng.normal(0, 1e4, shape + (2,)),
        zcount=rng.integers(0, 10 ** 6, shape).astype(float), czar=rng.normal(0, 1e-3, shape + (2,)),
        last=rng.normal(size=4), n_samples=123456789,
    )
    e = ExtendedABF(system, cvs.parse_cv_spec("phi,psi", top), st.grid_min, st.grid_max, shape, 100.0,
                    positions=pos, initialState=st)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform))
    ctx.setPositions(e.extendPositions(pos))
    back = e.getState(ctx)
    for name in ("count", "grad", "zcount", "czar", "last"):
        np.testing.assert_array_equal(getattr(back, name), getattr(st, name), err_msg=name)
    assert back.n_samples == st.n_samples


def test_state_save_load(tmp_path):
    st = EABFState(np.array([0.0]), np.array([1.0]), np.array([4]), np.array([False]), np.array([10.0]),
                   np.arange(4.0), np.ones((4, 1)), np.arange(4.0), np.zeros((4, 1)), np.zeros(2), 6,
                   meta={"cv": "x"})
    st.save(tmp_path / "s.npz")
    back = EABFState.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.count, st.count)
    assert back.meta == {"cv": "x"} and back.n_samples == 6


class _BadShape(torch.nn.Module):
    def forward(self, positions: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        return positions[:2, :2]


def test_bad_inputs_raise_clear_errors():
    system, top, pos = _alanine()
    phi = cvs.parse_cv_spec("phi", top)
    with pytest.raises(ValueError, match=r"shape \(d,\).*got shape \(2, 2\)"):
        ExtendedABF(system, _BadShape(), -1, 1, 10, 100.0, positions=pos)
    with pytest.raises(EABFError, match=r"gridMin must be < gridMax.*gridMin=1.0, gridMax=1.0"):
        ExtendedABF(system, phi, 1.0, 1.0, 10, 100.0, positions=pos, periodic=False)
    with pytest.raises(EABFError, match=r"bins must be positive integers.*bins=0"):
        ExtendedABF(system, phi, -math.pi, math.pi, 0, 100.0, positions=pos)
    with pytest.raises(EABFError, match=r"kappa must be > 0.*kappa=0.0"):
        ExtendedABF(system, phi, -math.pi, math.pi, 10, 0.0, positions=pos)
    with pytest.raises(EABFError, match=r"kappa must be > 0.*kappa=-5.0"):
        ExtendedABF(system, phi, -math.pi, math.pi, 10, -5.0, positions=pos)
    with pytest.raises(EABFError, match=r"periodic component 0 needs gridMax - gridMin = 2\*pi"):
        ExtendedABF(system, phi, -1.0, 1.0, 10, 100.0, positions=pos)
    with pytest.raises(EABFError, match=r"forceGroup=0 is already used"):
        ExtendedABF(system, phi, -math.pi, math.pi, 10, 100.0, positions=pos, forceGroup=0)
    class _NoJacobian(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("atom_indices", torch.tensor([0]))

        def forward(self, positions: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
            return positions[0, 0:1]

    with pytest.raises(EABFError, match="cvJacobian=True but the CV has no value_and_jacobian"):
        ExtendedABF(system, _NoJacobian(), -1.0, 1.0, 10, 100.0, positions=pos, cvJacobian=True)
    assert system.getNumParticles() == 22  # failed constructions leave the System untouched


def test_obc_implicit_solvent_is_refused():
    pdb = app.PDBFile(PDB)
    system = app.ForceField("amber14-all.xml", "implicit/obc2.xml").createSystem(pdb.topology)
    pos = np.array(pdb.positions.value_in_unit(unit.nanometer))
    with pytest.raises(EABFError, match="CustomGBForce with per-particle parameters .* is not supported"):
        ExtendedABF(system, cvs.parse_cv_spec("phi", pdb.topology), -math.pi, math.pi, 10, 100.0, positions=pos)
    assert system.getNumParticles() == 22  # refused before touching the System


@pytest.mark.parametrize("implicit", ["implicit/gbn2.xml"])
def test_implicit_solvent_forces_unchanged_by_extended_particles(implicit):
    pdb = app.PDBFile(PDB)
    ff = app.ForceField("amber14-all.xml", implicit)
    system = ff.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds)
    pos = np.array(pdb.positions.value_in_unit(unit.nanometer))
    ref = openmm.Context(openmm.XmlSerializer.clone(system), openmm.VerletIntegrator(0.001), REF)
    e = ExtendedABF(system, cvs.parse_cv_spec("phi,psi", pdb.topology), [-math.pi] * 2, [math.pi] * 2, 10, 100.0,
                    positions=pos)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), REF)
    energies = []
    rng = np.random.default_rng(4)
    for lam, shift in [([0.3, 0.2], 0.0), ([-2.0, 1.0], rng.normal(0, 0.01, pos.shape))]:
        full = e.extendPositions(pos + shift)
        full[e.extendedIndices, 0] = lam
        ctx.setPositions(full)
        en, f_new = _group_energy_forces(ctx, 0)
        ref.setPositions(pos + shift)
        e_r, f_r = _group_energy_forces(ref, 0)
        np.testing.assert_allclose(f_new[: len(pos)], f_r, atol=1e-6)
        np.testing.assert_allclose(f_new[len(pos):], 0.0, atol=1e-9)
        energies.append(en - e_r)
    # at most a constant offset (the Born self term of a non-descreened, uncharged particle)
    assert energies[0] == pytest.approx(energies[1], abs=1e-6)


@pytest.mark.parametrize("jacobian", [True, False], ids=["closed-form", "autograd"])
def test_periodic_system_forces_match_finite_differences(jacobian):
    """Periodic System: the force module gets the box and the CV uses minimum images (an atom moved by a lattice
    vector changes nothing); forces still match finite differences on both CV routes."""
    pdb = app.PDBFile(PDB)
    ff = app.ForceField("amber14-all.xml")
    top = pdb.topology
    top.setPeriodicBoxVectors([openmm.Vec3(2.5, 0, 0), openmm.Vec3(0, 2.5, 0), openmm.Vec3(0, 0, 2.5)])
    system = ff.createSystem(top, nonbondedMethod=app.CutoffPeriodic, nonbondedCutoff=1.0, constraints=app.HBonds)
    pos = np.array(pdb.positions.value_in_unit(unit.nanometer))
    box = np.diag([2.5, 2.5, 2.5])
    cv = cvs.parse_cv_spec("phi,psi", top)
    e = ExtendedABF(system, cv, [-math.pi] * 2, [math.pi] * 2, [24, 24], [300.0] * 2, positions=pos, box=box,
                    cvJacobian=jacobian)
    assert e.usesPeriodic and e.usesCVJacobian == jacobian
    rng = np.random.default_rng(2)
    full = e.extendPositions(pos, box)
    full[e.extendedIndices, 0] += rng.normal(0, 0.3, 2)
    moved = full.copy()
    moved[8] += box[0] - box[2]  # an atom of both dihedrals, one lattice vector away
    forces = _fd_check(system, e, moved, rng)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), REF)
    e.setSampling(ctx, False)
    ctx.setPositions(full)
    _, f_whole = _group_energy_forces(ctx, e.forceGroup)
    np.testing.assert_allclose(forces, f_whole, rtol=1e-9, atol=1e-9)


def test_a_nan_lambda_is_read_as_outside_the_grid_not_as_a_row_index():
    """A blown-up state (NaN lambda) must not index the accumulators: it once made the bin row a garbage index and
    segfaulted the process. Run in a child process, so that a crash fails this test instead of the whole session."""
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import numpy as np, openmm
        from aesample import cvs
        from aesample.eabf import ExtendedABF
        s = openmm.System(); s.addParticle(1.0)
        f = openmm.CustomExternalForce("0.5*(x^2+y^2+z^2)"); f.addParticle(0, []); s.addForce(f)
        e = ExtendedABF(s, cvs.PositionX(0), -1.0, 1.0, 10, 100.0, positions=np.zeros((1, 3)))
        ctx = openmm.Context(s, openmm.LangevinMiddleIntegrator(300, 1, 0.002),
                             openmm.Platform.getPlatformByName("Reference"))
        x = e.extendPositions(np.array([[0.1, 0.0, 0.0]]))
        x[-1, 0] = np.nan  # the extended variable
        ctx.setPositions(x)
        ctx.getIntegrator().step(3)
        st = e.getState(ctx)
        print(int(st.count.sum()), bool(np.isfinite(st.grad).all()))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    # no lambda sample accumulated from the NaN state: the ABF accumulators stay empty and finite
    assert out.stdout.split()[-2:] == ["0", "True"], out.stdout
