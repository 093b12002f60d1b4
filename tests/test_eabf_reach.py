"""The ABF bias is applied only where the CV has been (``biasOnlyWhereReached``).

A bounded CV (the autoencoder's tanh layers bound the loop's CVs) leaves grid bins that xi can never reach. There
lambda's mean force is only the spring pulling it back to xi; plain ABF cancels it, lambda runs off to the wall
and the spring pulls the atoms with it (on the loop's stiff CVs until the run blows up). Model: one particle, CV =
its x, held in |x| < 0.5 nm by a wall; ABF grid [-0.9, 0.9].
"""
import numpy as np
import openmm
import pytest

from aesample import cvs
from aesample import estimators as est
from aesample.eabf import ExtendedABF

REF = openmm.Platform.getPlatformByName("Reference")
T = 300.0
KT = est.kT(T)
KAPPA = 1000.0  # coupling width sqrt(kT / kappa) = 0.05 nm, half an ABF bin


def _walled_particle_run(gate: bool, seed: int, n_blocks: int = 300, block: int = 100, smooth=None):
    system = openmm.System()
    system.addParticle(1.0)
    wall = openmm.CustomExternalForce("kw*max(0, abs(x)-0.5)^2 + 0.5*kc*(y^2+z^2)")
    wall.addGlobalParameter("kw", 2e4)
    wall.addGlobalParameter("kc", 1000.0)
    wall.addParticle(0, [])
    system.addForce(wall)
    e = ExtendedABF(system, cvs.PositionX(0), -0.9, 0.9, 18, KAPPA, extendedPeriod=0.2, fullSamples=40,
                    czarBins=36, positions=np.zeros((1, 3)), biasOnlyWhereReached=gate, smoothBias=smooth)
    integ = openmm.LangevinMiddleIntegrator(T, 10.0, 0.005)
    integ.setRandomNumberSeed(seed)
    ctx = openmm.Context(system, integ, REF)
    ctx.setPositions(e.extendPositions(np.zeros((1, 3))))
    ctx.setVelocitiesToTemperature(T, seed)
    lam, x = [], []
    for _ in range(n_blocks):
        integ.step(block)
        lam.append(e.getLambda(ctx)[0])
        x.append(ctx.getState(getPositions=True).getPositions(asNumpy=True)._value[0, 0])
    return e.getState(ctx), np.array(lam), np.array(x)


@pytest.mark.parametrize("seed", [3, 5])
def test_lambda_stays_where_the_cv_can_follow(seed):
    state, lam, x = _walled_particle_run(True, seed)
    assert np.abs(x).max() < 0.56  # the wall holds the CV
    # lambda goes at most about a bin past the last bin xi reached: the spring pulls it back from there
    assert np.abs(lam).max() < 0.75, np.abs(lam).max()
    # the CZAR free energy inside the wall is still flat (the gate changes the applied bias, not the estimate)
    g = est.czar_gradient(state.czar, state.zcount, state.z_bin_width, T, state.periodic)
    A = est.integrate_gradient(g, state.z_bin_width, state.periodic, counts=state.zcount)
    inner = np.abs(state.z_centers()[0]) < 0.4
    assert np.isfinite(A[inner]).all()
    assert np.ptp(A[inner]) < 1.0 * KT, np.round(A[inner] / KT, 2)


def test_plain_abf_lets_lambda_run_off_past_the_cv():
    _, lam, x = _walled_particle_run(False, 3, smooth=False)  # the binned bias, per bin as plain eABF applies it
    assert np.abs(x).max() < 0.56
    assert np.abs(lam).max() > 0.85  # at the grid's wall, 0.35 nm past any xi: what the gate prevents
