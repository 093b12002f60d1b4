"""Tests of aesample.cvs: values against mdtraj, periodic images, gradients, spec parsing."""

import mdtraj
import numpy as np
import pytest
import torch

from aesample import cvs

PDB = "aesample/data/alanine_dipeptide_vacuum.pdb"


@pytest.fixture(scope="module")
def traj():
    t = mdtraj.load(PDB)
    rng = np.random.default_rng(0)
    xyz = t.xyz[0][None] + rng.normal(0, 0.03, (5,) + t.xyz[0].shape).astype(np.float32)
    return mdtraj.Trajectory(xyz, t.topology)


def test_phi_psi_match_mdtraj_batched_and_unbatched(traj):
    cv = torch.jit.script(cvs.parse_cv_spec("phi,psi", traj.topology))
    assert cv.cv_dim == 2 and cv.periodic == [True, True]
    ref = np.stack([mdtraj.compute_phi(traj)[1][:, 0], mdtraj.compute_psi(traj)[1][:, 0]], axis=1)
    xyz = torch.tensor(traj.xyz, dtype=torch.float64)
    out = cv(xyz, torch.zeros(len(traj), 3, 3, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)
    one = cv(xyz[0], torch.zeros(3, 3, dtype=torch.float64))
    assert one.shape == (2,)
    np.testing.assert_allclose(one.numpy(), ref[0], atol=1e-5)


def test_distance_and_periodic_minimum_image(traj):
    d = torch.jit.script(cvs.Distance([0, 10]))
    xyz = torch.tensor(traj.xyz[0], dtype=torch.float64)
    ref = np.linalg.norm(traj.xyz[0, 10] - traj.xyz[0, 0])
    assert float(d(xyz, torch.zeros(3, 3, dtype=torch.float64))) == pytest.approx(ref, abs=1e-6)
    # triclinic box; shifting atoms by lattice vectors changes nothing
    box = torch.tensor([[2.0, 0, 0], [0.5, 2.0, 0], [-0.4, 0.6, 2.0]], dtype=torch.float64)
    moved = xyz.clone()
    moved[10] += box[0] - 2 * box[2]
    moved[14] += box[1]
    assert float(d(moved, box)) == pytest.approx(ref, abs=1e-6)
    phi = torch.jit.script(cvs.parse_cv_spec("phi,psi", traj.topology))
    np.testing.assert_allclose(phi(moved, box).numpy(), phi(xyz, box).numpy(), atol=1e-9)


def test_dihedral_gradient_matches_finite_differences(traj):
    cv = torch.jit.script(cvs.parse_cv_spec("phi", traj.topology))
    x = torch.tensor(traj.xyz[1], dtype=torch.float64, requires_grad=True)
    box = torch.zeros(3, 3, dtype=torch.float64)
    (g,) = torch.autograd.grad(cv(x, box).sum(), x)
    h = 1e-6
    for a in cv.atom_indices.tolist():
        for k in range(3):
            p, m = x.detach().clone(), x.detach().clone()
            p[a, k] += h
            m[a, k] -= h
            fd = (cv(p, box) - cv(m, box)).item() / (2 * h)
            assert g[a, k].item() == pytest.approx(fd, rel=1e-5, abs=1e-7)
    others = np.setdiff1d(np.arange(x.shape[0]), cv.atom_indices.numpy())
    assert torch.all(g[others] == 0)


def test_cv_ignores_extra_particles(traj):
    cv = torch.jit.script(cvs.parse_cv_spec("dihedral:4,6,8,14", traj.topology))
    xyz = torch.tensor(traj.xyz[0], dtype=torch.float64)
    more = torch.cat([xyz, torch.randn(2, 3, dtype=torch.float64)])
    box = torch.zeros(3, 3, dtype=torch.float64)
    assert float(cv(more, box)) == float(cv(xyz, box))
    assert float(cv(xyz, box)) == pytest.approx(mdtraj.compute_phi(traj)[1][0, 0], abs=1e-5)


def test_spec_parsing_and_errors(traj):
    s = cvs.parse_cv_spec("phi;distance:0,10", traj.topology)
    assert s.cv_dim == 2 and s.periodic == [True, False]
    assert cvs.parse_cv_spec("x:3").cv_dim == 1
    with pytest.raises(ValueError, match="unknown CV name 'omega'"):
        cvs.parse_cv_spec("omega", traj.topology)
    with pytest.raises(ValueError, match="needs a topology"):
        cvs.parse_cv_spec("phi")
    with pytest.raises(ValueError, match="4 distinct"):
        cvs.parse_cv_spec("dihedral:1,2,3")
    with pytest.raises(ValueError, match="could not parse atom indices"):
        cvs.parse_cv_spec("distance:a,b")
    with pytest.raises(ValueError, match="at most 3"):
        cvs.Stack([cvs.PositionXY(0), cvs.PositionXY(1)])
    with pytest.raises(ValueError, match="residue=3 out of range"):
        cvs.peptide_dihedral(traj.topology, "phi", residue=3)


def test_check_cv_reports_wrong_shapes():
    class Bad(torch.nn.Module):
        def forward(self, positions: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
            return positions.sum()

    with pytest.raises(ValueError, match=r"mycv: a CV must return shape \(d,\).*got shape \(\)"):
        cvs.check_cv(torch.jit.script(Bad()), np.zeros((4, 3)), name="mycv")


@pytest.mark.parametrize("spec", ["phi", "phi,psi", "phi;distance:0,10", "x:3", "dihedral:4,6,8,14;distance:1,9;x:2"])
def test_closed_form_jacobian_matches_autograd(traj, spec):
    cv = torch.jit.script(cvs.parse_cv_spec(spec, traj.topology))
    boxes = [torch.zeros(3, 3, dtype=torch.float64),
             torch.tensor([[2.0, 0, 0], [0.5, 2.0, 0], [-0.4, 0.6, 2.0]], dtype=torch.float64)]
    for frame, box in zip((2, 3), boxes):
        x = torch.tensor(traj.xyz[frame], dtype=torch.float64)
        if box.any():
            x[10] += box[0] - box[2]  # a wrapped atom: the Jacobian must use the minimum image too
        xi, jac = cv.value_and_jacobian(x, box)
        assert jac.shape == (cv.cv_dim, cv.atom_indices.numel(), 3)
        xr = x.clone().requires_grad_(True)
        ref = cv(xr, box)
        np.testing.assert_allclose(xi.numpy(), ref.detach().numpy(), rtol=0, atol=1e-12)
        for k in range(cv.cv_dim):
            (g,) = torch.autograd.grad(ref[k], xr, retain_graph=True)
            full = torch.zeros_like(x)
            full[cv.atom_indices] = jac[k]
            np.testing.assert_allclose(full.numpy(), g.numpy(), rtol=1e-9, atol=1e-9)
