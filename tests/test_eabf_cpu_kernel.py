"""The compiled CPU eABF step (aesample.cpukernel) computes what the TorchScript step computes."""
import numpy as np
import openmm
import pytest
import torch

from aesample import cpukernel, cvs
from aesample.eabf import EABFError, ExtendedABF
from aesample.md import copy_system

from .learnedcv import make_learned_cv

REF = openmm.Platform.getPlatformByName("Reference")
ONE, ZERO = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)


@pytest.fixture(scope="module", autouse=True)
def kernel():
    ok, why = cpukernel.load()
    if not ok:
        pytest.skip(f"the compiled CPU step does not build here: {why}")


def _learned_cv(adp, path, rotation_solver="eigh"):
    return make_learned_cv(adp, path, rotation_solver=rotation_solver, scale=0.05, n_frames=64)


@pytest.fixture(scope="module")
def learned_cv(adp, tmp_path_factory):
    return _learned_cv(adp, tmp_path_factory.mktemp("cv") / "cv.pt")


def _force(adp, cv, kernel, system=None, **kw):
    args = dict(periodic=[False] * 2, positions=adp.positions, fullSamples=20, minSamples=5, smoothBiasInterval=7)
    args.update(kw)
    system = copy_system(adp.system) if system is None else system
    return ExtendedABF(system, cv, [-1.5] * 2, [1.5] * 2, [30] * 2, [3000.0] * 2, cpuKernel=kernel, **args)


def _other_walker(adp, cv, smooth):
    """Another walker's sums: a short eABF run (TorchScript step) of its own."""
    system = copy_system(adp.system)
    e = _force(adp, cv, False, system=system, smoothBias=smooth)
    return e.getState(_run(adp, system, e, 300, seed=7))


def _run(adp, system, e, steps, seed):
    """A Reference Context of ``system`` (with the force ``e``) after ``steps`` Langevin steps."""
    integ = openmm.LangevinMiddleIntegrator(300.0, 5.0, 0.002)
    integ.setRandomNumberSeed(seed)
    ctx = openmm.Context(system, integ, REF)
    ctx.setPositions(e.extendPositions(adp.positions))
    ctx.setVelocitiesToTemperature(300.0, seed)
    integ.step(steps)
    return ctx


@pytest.mark.parametrize("smooth,gate,shared", [(True, True, False), (False, True, False), (True, False, False),
                                                (False, True, True), (True, True, True)])
def test_compiled_step_matches_the_torchscript_step(adp, learned_cv, smooth, gate, shared):
    """Forces, energy and every accumulator over 300 samples through filling bins, smooth-bias refreshes (every 7
    samples), the reach gate and other walkers' sums, lambda now and then off the grid; float64 and float32."""
    other = _other_walker(adp, learned_cv, smooth) if shared else None
    plain = _force(adp, learned_cv, False, smoothBias=smooth, biasOnlyWhereReached=gate, sharedState=other)
    fast = _force(adp, learned_cv, True, smoothBias=smooth, biasOnlyWhereReached=gate, sharedState=other)
    assert fast.cpuKernel and not plain.cpuKernel
    x0 = plain.extendPositions(adp.positions)
    rng = np.random.default_rng(0)
    for i in range(300):
        x = torch.tensor(x0 + rng.normal(0, 0.004, x0.shape))
        x[-2:, 0] += torch.tensor(rng.normal(0, 0.1, 2) if i % 50 else rng.uniform(-1.8, 1.8, 2))
        for dtype in (torch.float64,) if i % 10 else (torch.float64, torch.float32):
            e0, f0 = plain.module(x.to(dtype), ONE, ZERO, ZERO)
            e1, f1 = fast.module(x.to(dtype), ONE, ZERO, ZERO)
            assert f1.dtype == dtype and e1.dtype == dtype
            tol = 1e-10 if dtype == torch.float64 else 1e-5
            np.testing.assert_allclose(f1.numpy(), f0.numpy(), rtol=tol, atol=tol * float(f0.abs().max()))
            np.testing.assert_allclose(float(e1), float(e0), rtol=tol, atol=tol)
    a, b = plain._core, fast._core
    assert float(a.n_samples) == float(b.n_samples) > 250
    np.testing.assert_allclose(b.last.numpy(), a.last.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(b.acc[:, 0].numpy(), a.acc[:, 0].numpy())  # counts
    np.testing.assert_allclose(b.acc.numpy(), a.acc.numpy(), rtol=1e-10, atol=1e-8)
    assert int((a.acc[:900, 0] + a.shared[:900, 0] >= 20).sum()) >= 3  # bins with the full bias: the bias acted
    if smooth:
        assert float(a.pot.abs().max()) > 1.0  # refreshed from filled bins
        np.testing.assert_allclose(b.pot.numpy(), a.pot.numpy(), rtol=1e-10, atol=1e-8)
        np.testing.assert_array_equal(b.pot_cover.numpy(), a.pot_cover.numpy())


def test_compiled_step_runs_the_same_dynamics_and_reads_out_the_same_state(adp, learned_cv):
    """Reference-platform MD through the force: the same trajectory and state (to rounding) over 0.4 ps."""
    runs = []
    for kernel in (False, True):
        system = copy_system(adp.system)
        e = _force(adp, learned_cv, kernel, system=system, smoothBiasInterval=50)
        ctx = _run(adp, system, e, 200, seed=3)
        pos = ctx.getState(getPositions=True).getPositions(asNumpy=True)._value
        runs.append((np.asarray(pos), e.getState(ctx), np.concatenate(e.getInstantaneous(ctx))))
    (p0, s0, i0), (p1, s1, i1) = runs
    assert s0.n_samples == s1.n_samples >= 199
    np.testing.assert_allclose(p1, p0, atol=1e-7)
    np.testing.assert_allclose(i1, i0, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(s1.count, s0.count)
    np.testing.assert_allclose(s1.grad, s0.grad, rtol=1e-6, atol=1e-4)


def test_compiled_step_refuses_what_it_does_not_compute(adp, learned_cv, tmp_path):
    """cpuKernel=True names why it cannot be used; None falls back to the TorchScript step and says why."""
    phipsi = cvs.parse_cv_spec("phi,psi", adp.mdtraj_topology)
    with pytest.raises(EABFError, match="periodic"):
        ExtendedABF(copy_system(adp.system), phipsi, [-np.pi] * 2, [np.pi] * 2, 12, 200.0, positions=adp.positions,
                    cpuKernel=True)
    power = _learned_cv(adp, tmp_path / "power.pt", rotation_solver="power")
    with pytest.raises(EABFError, match="eigh"):
        _force(adp, power, True)
    e = _force(adp, power, None)
    assert not e.cpuKernel and "eigh" in e.cpuKernelNote
    assert _force(adp, learned_cv, None).cpuKernel


def test_a_failed_build_falls_back_to_the_torchscript_step(adp, learned_cv, monkeypatch):
    """Without a compiler (simulated): None runs the TorchScript step and says why; True is an error naming it."""
    monkeypatch.setattr(cpukernel, "_state", {"ok": False, "why": "CalledProcessError: no c++ compiler"})
    e = _force(adp, learned_cv, None)
    assert not e.cpuKernel and "no c++ compiler" in e.cpuKernelNote
    with pytest.raises(EABFError, match="no c\\+\\+ compiler"):
        _force(adp, learned_cv, True)
