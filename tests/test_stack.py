"""The pinned stack: openmm-torch loads and a TorchForce evaluates energies and forces."""

from __future__ import annotations

import numpy as np
import openmm
import pytest
import torch

from tests.conftest import cuda_available


class _Harmonic(torch.nn.Module):
    def forward(self, positions: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return (k * positions**2).sum()


def _energy_forces(platform_name: str):
    import openmmtorch

    force = openmmtorch.TorchForce(torch.jit.script(_Harmonic()), {})
    force.addGlobalParameter("k", 2.5)
    system = openmm.System()
    for _ in range(3):
        system.addParticle(1.0)
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform_name))
    pos = np.array([[0.1, 0.2, 0.3], [-0.4, 0.5, 0.0], [1.0, -1.0, 0.5]])
    context.setPositions(pos)
    state = context.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy()._value
    forces = state.getForces(asNumpy=True)._value
    return pos, energy, forces


def test_torchforce_reference():
    pos, energy, forces = _energy_forces("Reference")
    assert energy == pytest.approx(2.5 * (pos**2).sum(), rel=1e-6)
    np.testing.assert_allclose(forces, -2 * 2.5 * pos, rtol=1e-6)


def test_torch_version_pinned():
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    assert (2, 10) <= (major, minor) < (2, 13)
    assert openmm.__version__.startswith("8.6")


@pytest.mark.gpu
def test_torchforce_cuda():
    if not cuda_available():
        pytest.skip("no CUDA device")
    pos, energy, forces = _energy_forces("CUDA")
    assert energy == pytest.approx(2.5 * (pos**2).sum(), rel=1e-5)
    np.testing.assert_allclose(forces, -2 * 2.5 * pos, rtol=1e-4)
