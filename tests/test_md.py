"""Tests of aesample.md: segmented eABF runs, outputs and bit-reproducible resume."""
import json
import math
from types import SimpleNamespace

import numpy as np
import openmm
import pytest
from openmm import app, unit

from aesample import cvs
from aesample.eabf import EABFState
from aesample.md import EABFSettings, MDSettings, run_eabf
from aesample.outputs import read_colvar, read_grid


def _alanine():
    pdb = app.PDBFile("aesample/data/alanine_dipeptide_vacuum.pdb")
    ff = app.ForceField("amber14-all.xml")
    system = ff.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds)
    pos = np.array(pdb.positions.value_in_unit(unit.nanometer))
    return SimpleNamespace(system=system, topology=pdb.topology, positions=pos, temperature=300.0, box=None)


def _settings(seed=3):
    es = EABFSettings(grid_min=[-math.pi] * 2, grid_max=[math.pi] * 2, bins=[12, 12], kappa=200.0, full_samples=20)
    md = MDSettings(timestep=0.002, friction=5.0, platform="Reference", report_interval=25, segment_steps=100,
                    minimize=True, minimize_max_iterations=50, equilibration_steps=20, seed=seed, progress=False)
    return es, md


def test_resume_reproduces_continuous_run(tmp_path):
    ms = _alanine()
    cv = cvs.parse_cv_spec("phi,psi", ms.topology)
    es, md = _settings()
    cont = run_eabf(ms, cv, es, md, tmp_path / "cont", 300, log=None)
    # same run, interrupted after the first segment and resumed twice
    part = run_eabf(ms, cv, es, md, tmp_path / "split", 100, log=None)
    assert part.n_steps == 100 and part.state.n_samples > 0
    mid = run_eabf(ms, cv, es, md, tmp_path / "split", 200, resume=True, log=None)
    assert mid.n_steps == 200
    from aesample.md import load_result

    at_200 = load_result(tmp_path / "split")  # what the continuous run's half-time state must reproduce
    at_200_lambda = at_200.colvar_lambda()
    at_200_first = at_200.reweighting_weights("naive")
    res = run_eabf(ms, cv, es, md, tmp_path / "split", 300, resume=True, log=None)
    assert res.n_steps == 300
    for name in ("count", "grad", "zcount", "czar", "last"):
        np.testing.assert_array_equal(getattr(res.state, name), getattr(cont.state, name), err_msg=name)
    assert res.state.n_samples == cont.state.n_samples
    np.testing.assert_array_equal(res.positions, cont.positions)
    f1, c1 = read_colvar(cont.colvar)
    f2, c2 = read_colvar(res.colvar)
    assert f1 == f2 == ["time", "xi_1", "xi_2", "lambda_1", "lambda_2", "fbias_1", "fbias_2"]
    np.testing.assert_array_equal(c1, c2)
    assert c1.shape[0] == 300 // 25
    np.testing.assert_allclose(c1[:, 0], 0.05 * np.arange(1, 13))
    # one trajectory per segment, frames aligned with COLVAR rows
    assert [p.name for p in res.trajectories] == ["seg_00000.dcd", "seg_00001.dcd", "seg_00002.dcd"]
    import mdtraj

    t = mdtraj.load([str(p) for p in res.trajectories], top=mdtraj.Topology.from_openmm(ms.topology))
    assert t.n_frames == 12
    phi = mdtraj.compute_phi(t)[1][:, 0]
    np.testing.assert_allclose(phi, c2[:, 1], atol=2e-3)  # DCD stores float32 Angstrom
    ck = json.loads((tmp_path / "split" / "checkpoint.json").read_text())
    assert ck["segment"] == 2 and ck["step"] == 300
    assert sorted(p.name for p in (tmp_path / "split" / "checkpoint").iterdir()) == [
        "seg_00002.chk", "seg_00002.eabf.npz", "seg_00002.xml"]
    st = EABFState.load(tmp_path / "split" / "checkpoint" / ck["eabf"])
    np.testing.assert_array_equal(st.count, res.state.count)
    # grids on disk match the state
    cnt, gmin, width, per = read_grid(tmp_path / "split" / "eabf.count")
    np.testing.assert_array_equal(cnt, res.state.count)
    assert per.tolist() == [True, True]
    for suffix in (".grad", ".pmf", ".czar.grad", ".czar.pmf", ".zcount"):
        assert (tmp_path / "split" / ("eabf" + suffix)).is_file()
    # the half-time eABF state: the checkpoint at step 200 of 300 (first at or past half), strictly before the end
    half = load_result(tmp_path / "cont").half_state
    assert half is not None and 0 < half.n_samples < cont.state.n_samples
    assert abs(3 * half.n_samples - 2 * cont.state.n_samples) <= 3
    assert half.meta["production_step"] == "200"
    # ... which splits the samples in two: the first half is the run as it stood at step 200, frames and all
    whole = load_result(tmp_path / "cont")
    assert whole.first_half_frames().tolist() == [True] * 8 + [False] * 4
    np.testing.assert_array_equal(whole.colvar_lambda()[:8], at_200_lambda)
    labels = np.arange(12) % 2  # any two-set partition of the frames that each half has both sets of
    halves = whole.delta_f_halves(labels, "naive")
    from aesample.estimators import kT as kT_of

    kT = kT_of(300.0)
    assert halves["first"] == pytest.approx(-kT * np.log(at_200_first[1::2].sum() / at_200_first[::2].sum()),
                                            rel=1e-12)
    late = EABFState.weighted_sum([(1.0, whole.state), (-1.0, half)])
    assert late.n_samples == whole.state.n_samples - half.n_samples
    w2 = whole.reweighting_weights("naive", late, lambdas=whole.colvar_lambda()[8:])
    assert halves["second"] == pytest.approx(-kT * np.log(w2[1::2].sum() / w2[::2].sum()), rel=1e-12)
    assert halves["first"] != pytest.approx(halves["second"])
    # a half-time state saved before the step was recorded: the split comes from its share of the samples
    del whole.half_state.meta["production_step"]
    assert whole.first_half_frames().tolist() == [True] * 8 + [False] * 4
    drift = load_result(tmp_path / "cont").free_energy_drift("naive")
    assert drift["rms"] > 0 and 0 < drift["frames"] <= 1
    # CZAR needs sampled neighbour bins for its density gradient: after 200 steps on 144 bins it may have no bin
    # estimated at both times, which must read as NaN on no frames, never as a number
    czar = load_result(tmp_path / "cont").free_energy_drift("czar")
    assert (czar["frames"] == 0.0) == bool(np.isnan(czar["rms"])) and 0 <= czar["frames"] <= 1
    # the split run never had a segment past half of its then-requested length before the end: no state, no drift
    assert load_result(tmp_path / "split").half_state is None
    assert load_result(tmp_path / "split").free_energy_drift() is None


def _phi_run_100_steps(out):
    """A 100-step eABF run along phi (one segment, COLVAR rows at 0.05 ... 0.2 ps); returns what resumes it."""
    ms = _alanine()
    cv = cvs.parse_cv_spec("phi", ms.topology)
    es = EABFSettings(grid_min=-math.pi, grid_max=math.pi, bins=12, kappa=200.0)
    _, md = _settings()
    run_eabf(ms, cv, es, md, out, 100, log=None)
    return ms, cv, es, md


def test_resume_drops_colvar_rows_after_checkpoint(tmp_path):
    ms, cv, es, md = _phi_run_100_steps(tmp_path)
    with open(tmp_path / "COLVAR", "a") as fh:  # rows of a segment that crashed before its checkpoint
        fh.write("0.25 1 1 0\n0.3 1 1 0\n")
    res = run_eabf(ms, cv, es, md, tmp_path, 200, resume=True, log=None)
    _, c = read_colvar(res.colvar)
    np.testing.assert_allclose(c[:, 0], 0.05 * np.arange(1, 9))


def test_resume_keeps_the_row_at_the_checkpoint_whatever_its_printed_time(tmp_path):
    # After ~10^6 steps the checkpoint time (a float sum of steps) and the 10-digit COLVAR time can differ in the
    # last digits; a time comparison then dropped the row at the checkpoint and left frames one ahead of COLVAR.
    ms, cv, es, md = _phi_run_100_steps(tmp_path)
    lines = (tmp_path / "COLVAR").read_text().splitlines(keepends=True)
    assert lines[-1].split()[0] == "0.2"
    lines[-1] = lines[-1].replace("0.2", "0.200000002", 1)  # printed a hair above the checkpoint time
    (tmp_path / "COLVAR").write_text("".join(lines))
    res = run_eabf(ms, cv, es, md, tmp_path, 200, resume=True, log=None)
    _, c = read_colvar(res.colvar)
    assert c.shape[0] == 8
    import mdtraj

    t = mdtraj.load([str(p) for p in res.trajectories], top=mdtraj.Topology.from_openmm(ms.topology))
    assert t.n_frames == c.shape[0]
    # resuming with another report interval would put frames and rows out of step: refused
    md.report_interval = 50
    with pytest.raises(ValueError, match="report_interval=25"):
        run_eabf(ms, cv, es, md, tmp_path, 300, resume=True, log=None)


def test_bad_md_settings(tmp_path):
    ms = _alanine()
    cv = cvs.parse_cv_spec("phi", ms.topology)
    es = EABFSettings(grid_min=-math.pi, grid_max=math.pi)
    md = MDSettings(platform="Reference", report_interval=30, segment_steps=100, progress=False)
    with pytest.raises(ValueError, match="segment_steps=100 must be a multiple of report_interval=30"):
        run_eabf(ms, cv, es, md, tmp_path, 100, log=None)


def test_colvar_reporter_with_simulation(tmp_path):
    from aesample.eabf import ExtendedABF
    from aesample.outputs import ColvarReporter

    ms = _alanine()
    e = ExtendedABF(ms.system, cvs.parse_cv_spec("phi,psi", ms.topology), [-math.pi] * 2, [math.pi] * 2, 12, 200.0,
                    positions=ms.positions)
    integ = openmm.LangevinMiddleIntegrator(300.0, 5.0, 0.002)
    integ.setRandomNumberSeed(1)
    sim = app.Simulation(ms.topology, ms.system, integ, openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(e.extendPositions(ms.positions))
    rep = ColvarReporter(tmp_path / "COLVAR", e, 10)
    sim.reporters.append(rep)
    sim.step(50)
    rep.close()
    fields, data = read_colvar(tmp_path / "COLVAR")
    assert data.shape == (5, 7)
    np.testing.assert_allclose(data[:, 0], [0.02, 0.04, 0.06, 0.08, 0.1])
    xi = e.getCollectiveVariables(sim.context)
    np.testing.assert_allclose(data[-1, 1:3], xi, atol=1e-9)
    np.testing.assert_allclose(data[-1, 3:5], e.getLambda(sim.context), atol=1e-9)
    assert e.getState(sim.context).n_samples == 51  # the reporter's evaluations add no extra samples


def _mts_settings(cv_interval=2, seed=3):
    es = EABFSettings(grid_min=[-math.pi] * 2, grid_max=[math.pi] * 2, bins=[12, 12], kappa=200.0, full_samples=20)
    md = MDSettings(timestep=0.002, friction=5.0, platform="Reference", report_interval=20, segment_steps=100,
                    minimize=True, minimize_max_iterations=50, equilibration_steps=20, seed=seed, progress=False,
                    cv_interval=cv_interval)
    return es, md


def test_mts_resume_reproduces_continuous_run(tmp_path):
    ms = _alanine()
    cv = cvs.parse_cv_spec("phi,psi", ms.topology)
    es, md = _mts_settings(cv_interval=2)
    cont = run_eabf(ms, cv, es, md, tmp_path / "cont", 200, log=None)
    run_eabf(ms, cv, es, md, tmp_path / "split", 100, log=None)
    res = run_eabf(ms, cv, es, md, tmp_path / "split", 200, resume=True, log=None)
    assert res.n_steps == cont.n_steps == 200
    for name in ("count", "grad", "zcount", "czar", "last"):
        np.testing.assert_array_equal(getattr(res.state, name), getattr(cont.state, name), err_msg=name)
    np.testing.assert_array_equal(res.positions, cont.positions)
    # one sample per outer step (2 inner steps): 100 outer steps, plus the configuration production starts from
    assert cont.state.n_samples in (100, 101)
    _, c1 = read_colvar(cont.colvar)
    _, c2 = read_colvar(res.colvar)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_allclose(c1[:, 0], 0.04 * np.arange(1, 11))  # report_interval 20 inner steps of 2 fs
    assert json.loads((tmp_path / "split" / "run.json").read_text())["cv_interval"] == 2
    # the run really used the MTS integrator: a resume with another interval is refused
    with pytest.raises(ValueError, match="started with cv_interval=2"):
        run_eabf(ms, cv, es, _mts_settings(cv_interval=1)[1], tmp_path / "split", 300, resume=True, log=None)


def test_mts_settings_are_validated(tmp_path):
    ms = _alanine()
    cv = cvs.parse_cv_spec("phi", ms.topology)
    es = EABFSettings(grid_min=-math.pi, grid_max=math.pi, bins=12, kappa=200.0, extended_period=0.15)
    _, md = _mts_settings(cv_interval=10)  # 20 fs outer step > 0.15 ps / 10
    with pytest.raises(ValueError, match=r"cv_interval=10 .*period / 10 = 15 fs"):
        run_eabf(ms, cv, es, md, tmp_path, 100, log=None)
    _, md = _mts_settings(cv_interval=3)  # report_interval 20 is not a multiple of 3
    with pytest.raises(ValueError, match="must be multiples of cv_interval=3"):
        run_eabf(ms, cv, es, md, tmp_path, 100, log=None)
    # non-periodic CV: the default walls (10 kappa) make the extended system stiffer
    dist = cvs.parse_cv_spec("distance:0,10", ms.topology)
    es_d = EABFSettings(grid_min=0.2, grid_max=0.8, bins=12, kappa=200.0, extended_period=0.15)
    _, md = _mts_settings(cv_interval=4)
    with pytest.raises(ValueError, match="shortest period is 45.2 fs"):
        run_eabf(ms, dist, es_d, md, tmp_path, 100, log=None)


def test_mts_integrator_matches_openmm_mts_langevin():
    """Same positions as openmm.MTSLangevinIntegrator (velocities shifted by half a slow kick), same samples."""
    from aesample.eabf import ExtendedABF
    from aesample.md import mts_langevin_integrator

    pdb = app.PDBFile("aesample/data/alanine_dipeptide_vacuum.pdb")
    ff = app.ForceField("amber14-all.xml")
    k, outer = 3, 0.0015
    runs = []
    for ours in (False, True):
        # no CMMotionRemover: it acts at the start of a step, where the two schemes' velocities differ
        system = ff.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None, removeCMMotion=False)
        pos = np.array(pdb.positions.value_in_unit(unit.nanometer))
        e = ExtendedABF(system, cvs.parse_cv_spec("phi,psi", pdb.topology), [-math.pi] * 2, [math.pi] * 2, 12, 300.0,
                        positions=pos, fullSamples=4)
        integ = (mts_langevin_integrator(300.0, 0.0, outer, k, [0], e.forceGroup) if ours else
                 openmm.MTSLangevinIntegrator(300.0, 0.0, outer, [(0, k), (e.forceGroup, 1)]))
        ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName("Reference"))
        full = e.extendPositions(pos)
        full[e.extendedIndices, 0] += 0.2
        ctx.setPositions(full)
        ctx.setVelocitiesToTemperature(300.0, 4)
        if ours:  # start where MTSLangevinIntegrator is after its first slow half kick
            v = runs[0][0].getState(getVelocities=True).getVelocities(asNumpy=True)._value
            f = ctx.getState(getForces=True, groups={e.forceGroup}).getForces(asNumpy=True)._value
            m = np.array([system.getParticleMass(i)._value for i in range(system.getNumParticles())])
            ctx.setVelocities(np.asarray(v) + 0.5 * outer * np.asarray(f) / m[:, None])
        runs.append((ctx, integ, e))
    for ctx, integ, _ in runs:
        integ.step(60)
    p0, p1 = (np.asarray(c.getState(getPositions=True).getPositions(asNumpy=True)._value) for c, _, _ in runs)
    np.testing.assert_allclose(p1, p0, rtol=0, atol=1e-12)
    s0, s1 = (e.getState(c) for c, _, e in runs)
    assert s0.n_samples == s1.n_samples == 61
    np.testing.assert_array_equal(s0.count, s1.count)


def test_cpu_threads_reach_the_cpu_platform_only():
    from aesample.md import MDSettings, _platform

    platform, props = _platform(MDSettings(platform="CPU", cpu_threads=1), 100)
    assert platform.getName() == "CPU" and props["Threads"] == "1"
    # explicit properties win; other platforms get no thread property
    assert _platform(MDSettings(platform="CPU", cpu_threads=1, platform_properties={"Threads": "2"}), 100)[1][
        "Threads"] == "2"
    assert "Threads" not in _platform(MDSettings(platform="Reference", cpu_threads=1), 22)[1]


def test_czar_grid_and_time_blocks_survive_resume(tmp_path):
    """A CZAR grid finer than the ABF grid, and the block snapshots behind the error bars: a resumed run writes
    the same blocks as an uninterrupted one, and the blocks add up to the final accumulators."""
    from aesample.md import load_result

    ms = _alanine()
    cv = cvs.parse_cv_spec("phi,psi", ms.topology)
    es, md = _settings()
    es.czar_bins = [24, 24]
    md.error_blocks = 4
    cont = run_eabf(ms, cv, es, md, tmp_path / "cont", 200, log=None)
    run_eabf(ms, cv, es, md, tmp_path / "split", 100, log=None)
    (tmp_path / "split" / "blocks" / "step_0000000999.npz").write_bytes(b"stale")  # past the checkpoint
    res = run_eabf(ms, cv, es, md, tmp_path / "split", 200, resume=True, log=None)
    assert res.state.zcount.shape == (24, 24) and res.state.count.shape == (12, 12)
    np.testing.assert_array_equal(res.state.zcount, cont.state.zcount)
    values, _, width, _ = read_grid(tmp_path / "split" / "eabf.zcount")
    assert values.shape == (24, 24) and width[0] == pytest.approx(2 * math.pi / 24)
    names = sorted(p.name for p in (tmp_path / "cont" / "blocks").iterdir())
    # blocks of 50 steps (200 / 4); the split run's first 100 steps had blocks of 25 (100 / 4): its snapshots are
    # those, then the extension's, and the stale one past the checkpoint is gone
    assert names == [f"step_{s:010d}.npz" for s in (50, 100, 150, 200)]
    split = sorted(p.name for p in (tmp_path / "split" / "blocks").iterdir())
    assert split == [f"step_{s:010d}.npz" for s in (25, 50, 75, 100, 150, 200)]
    for name in names:  # the same trajectory: the same cumulative accumulators at the same steps
        a, b = EABFState.load(tmp_path / "cont" / "blocks" / name), EABFState.load(tmp_path / "split" / "blocks" / name)
        np.testing.assert_array_equal(a.czar, b.czar)
    snaps = load_result(tmp_path / "split").block_snapshots()  # what the run knew at each block end
    assert [step for step, _ in snaps] == [25, 50, 75, 100, 150, 200]
    np.testing.assert_array_equal(EABFState.load(snaps[-1][1]).zcount, res.state.zcount)
    ((frame_block, blocks),) = load_result(tmp_path / "split").block_increments()
    assert len(blocks) == 6 and frame_block.tolist() == [0, 1, 2, 3, 4, 4, 5, 5]
    np.testing.assert_allclose(sum(b.zcount for b in blocks), res.state.zcount)
    np.testing.assert_allclose(sum(b.czar for b in blocks), res.state.czar, atol=1e-9)
    # bootstrap replicates: the blocks' accumulators summed with the frames' block weights
    sizes = np.array([b.zcount.sum() for b in blocks])
    for st, mult in load_result(tmp_path / "split").bootstrap(n_boot=5, seed=1):
        assert len(mult) == 8 and np.all(mult > 0)
        block_w = np.array([mult[frame_block == i][0] for i in range(6)])
        assert st.zcount.sum() == pytest.approx(np.dot(block_w, sizes))
        assert not np.allclose(block_w, 1.0)


def test_run_outputs_read_each_file_once(tmp_path, monkeypatch):
    """A RunOutputs reads its COLVAR and accumulators once, however many estimators use them."""
    import aesample.md as md_module

    _phi_run_100_steps(tmp_path)
    res = md_module.load_result(tmp_path)
    reads = {"colvar": 0, "state": 0}
    read_colvar_file, load_state = md_module.read_colvar, EABFState.load.__func__

    def counting_colvar(path):
        reads["colvar"] += 1
        return read_colvar_file(path)

    def counting_load(cls, path):
        reads["state"] += 1
        return load_state(cls, path)

    monkeypatch.setattr(md_module, "read_colvar", counting_colvar)
    monkeypatch.setattr(EABFState, "load", classmethod(counting_load))
    xi, lam = res.colvar_xi(), res.colvar_lambda()
    assert xi.shape == lam.shape == (4, 1)
    w = res.reweighting_weights("czar")
    assert w.shape == (4,) and res.state is res.state
    res.free_energy("naive")
    pooled = md_module.PooledRuns([res])
    assert pooled.state is pooled.state and np.array_equal(pooled.colvar_xi(), xi)
    assert reads == {"colvar": 1, "state": 1}


def test_pooled_runs_label_each_row_with_its_walker(tmp_path):
    """Pooled COLVAR rows come in walker order and run_index says whose each row is."""
    from aesample.md import PooledRuns, load_result

    _phi_run_100_steps(tmp_path)
    res = load_result(tmp_path)
    one = PooledRuns([res])
    short = PooledRuns([res, load_result(tmp_path)])
    fields, rows = short.runs[1].colvar()
    short.runs[1]._colvar = (fields, rows[:2])  # a walker with fewer rows
    xi = res.colvar_xi()
    assert one.run_index().tolist() == [0, 0, 0, 0]
    assert short.run_index().tolist() == [0, 0, 0, 0, 1, 1]
    np.testing.assert_array_equal(short.colvar_xi(), np.concatenate([xi, xi[:2]]))


def _stiff_particle(k: float):
    """One argon-mass-1 particle in a harmonic well of stiffness k (kJ/mol/nm^2): unstable at 2 fs when k is huge."""
    system = openmm.System()
    system.addParticle(1.0)
    f = openmm.CustomExternalForce("0.5*k*(x^2 + y^2 + z^2)")
    f.addGlobalParameter("k", k)
    f.addParticle(0, [])
    system.addForce(f)
    top = app.Topology()
    top.addAtom("X", app.element.argon, top.addResidue("X", top.addChain()))
    return SimpleNamespace(system=system, topology=top, positions=np.array([[0.05, 0.0, 0.0]]), temperature=300.0,
                           box=None)


@pytest.mark.parametrize("biased", [True, False])
def test_a_run_that_blows_up_stops_with_a_clear_error_and_writes_nothing(tmp_path, biased):
    from aesample.md import SimulationBlowUp, run_md, steps_done

    md = MDSettings(timestep=0.002, friction=1.0, platform="Reference", report_interval=10, segment_steps=100,
                    minimize=False, equilibration_steps=0, seed=1, progress=False)
    stable = _stiff_particle(1e3)  # period 0.2 ps: 100 steps per period
    unstable = _stiff_particle(1e9)  # omega dt = 63: every step multiplies the amplitude
    if biased:
        es = EABFSettings(grid_min=-1.0, grid_max=1.0, bins=10, kappa=100.0)
        run_eabf(stable, cvs.PositionX(0), es, md, tmp_path / "ok", 200, log=None)
        assert steps_done(tmp_path / "ok") == 200  # the check does not stop a sane run
        with pytest.raises(SimulationBlowUp, match=r"blew up by step \d+: .*last checkpoint \(step 0\)"):
            run_eabf(unstable, cvs.PositionX(0), es, md, tmp_path / "bad", 200, log=None)
    else:
        run_md(stable, md, tmp_path / "ok", 200, log=None)
        with pytest.raises(SimulationBlowUp, match="non-finite atom positions"):
            run_md(unstable, md, tmp_path / "bad", 200, log=None)
    # the segment that blew up wrote no trajectory, grid or checkpoint
    assert steps_done(tmp_path / "bad") == 0
    assert not list((tmp_path / "bad" / "traj").glob("*"))
