"""Export round trip: Python pipeline vs TorchScript file vs OpenMM TorchForce (Reference)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aesample.export import compute_cv, export_cv, load_cv
from aesample.features import AlignedPositions, default_selection, select_atoms, spanning_tree_parents
from aesample.models import ModelSpec, AutoEncoder
from aesample.training import fit_cv_scaling

from .oracles import CVPipeline

PDB = Path(__file__).resolve().parents[1] / "aesample" / "data" / "alanine_dipeptide_vacuum.pdb"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small float32 model on noisy alanine dipeptide frames (weights need not be converged)."""
    import mdtraj as md

    t = md.load(str(PDB))
    top = t.topology
    sel = default_selection(top)
    idx = select_atoms(top, sel)
    feat = AlignedPositions(idx, t.xyz[0, idx], spanning_tree_parents(top, idx))
    rng = np.random.default_rng(0)
    x0 = t.xyz[0].astype(np.float64)
    frames = x0[None] + rng.normal(scale=0.03, size=(300,) + x0.shape)
    zero = torch.zeros(3, 3, dtype=torch.float64)
    raw = feat(torch.tensor(frames), zero)
    feat.fit_standardization(raw)
    torch.manual_seed(0)
    model = AutoEncoder(ModelSpec(n_features=3 * len(idx), hidden=(40,), n_cv=2))
    with torch.no_grad():
        z = model.encode(feat(torch.tensor(frames), zero).float())
    scaling = fit_cv_scaling(z)
    path = tmp_path_factory.mktemp("cv") / "encoder.pt"
    module = export_cv(feat, model, scaling, path, metadata={"selection": sel, "training": {"epochs": 0}})
    return dict(feat=feat, model=model, scaling=scaling, path=path, module=module, frames=frames, x0=x0, sel=sel, idx=idx)


def _torchforce_state(module_path, positions, masses, box=None, outputs_forces=False):
    """Energy (kJ/mol) and forces of one TorchForce loaded from ``module_path``, Reference platform."""
    import openmm as mm
    from openmmtorch import TorchForce

    system = mm.System()
    if box is not None:
        system.setDefaultPeriodicBoxVectors(*[mm.Vec3(*row) for row in box])
    for m in masses:
        system.addParticle(m)
    force = TorchForce(str(module_path))
    force.setUsesPeriodicBoundaryConditions(box is not None)
    force.setOutputsForces(outputs_forces)
    system.addForce(force)
    ctx = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(positions)
    st = ctx.getState(getEnergy=True, getForces=True)
    return st.getPotentialEnergy()._value, np.asarray(st.getForces(asNumpy=True)._value)


def test_contract_attributes_and_metadata(trained):
    cv, meta = load_cv(trained["path"])
    assert cv.cv_dim == 2 and list(cv.periodic) == [False, False]
    assert cv.atom_indices.dtype == torch.long and cv.atom_indices.tolist() == trained["idx"].tolist()
    assert meta["selection"] == trained["sel"] and meta["atom_indices"] == trained["idx"].tolist()
    assert meta["architecture"]["hidden"] == [40] and meta["training"] == {"epochs": 0}
    assert json.loads(trained["path"].with_suffix(".json").read_text())["cv_dim"] == 2


def test_exported_equals_python_model(trained):
    cv, _ = load_cv(trained["path"])
    ref = CVPipeline(trained["feat"], trained["model"], trained["scaling"])
    frames = torch.tensor(trained["frames"][:50])
    zero = torch.zeros(3, 3, dtype=torch.float64)
    with torch.no_grad():
        a = ref(frames, zero)
        b = cv(frames, torch.zeros(50, 3, 3, dtype=torch.float64))
        c = torch.stack([cv(f, zero) for f in frames])
        d = cv(frames.float(), zero.float())
    assert b.shape == (50, 2) and c.shape == (50, 2) and d.dtype == torch.float32
    assert (a - b).abs().max().item() < 1e-5
    assert (b - c).abs().max().item() < 1e-12
    assert (d.double() - b).abs().max().item() < 1e-5
    # scaling baked in: training frames span [-1, 1]
    assert np.allclose(b.numpy().min(0), -1, atol=0.5) and np.abs(ref(torch.tensor(trained["frames"]), zero).detach().numpy()).max() <= 1 + 1e-5
    # gradients equal too
    p1 = frames[0].clone().requires_grad_(True)
    p2 = frames[0].clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(ref(p1, zero)[0], p1)
    (g2,) = torch.autograd.grad(cv(p2, zero)[0], p2)
    assert (g1 - g2).abs().max().item() < 1e-4 * max(1.0, g1.abs().max().item())
    # chunked evaluation
    vals = compute_cv(cv, trained["frames"], chunk_size=64)
    assert vals.shape == (300, 2) and np.abs(vals[:50] - b.numpy()).max() < 1e-12


def test_invariance_and_zero_net_force_torque(trained):
    cv, _ = load_cv(trained["path"])
    rng = np.random.default_rng(4)
    x = trained["frames"][7]
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    from scipy.spatial.transform import Rotation

    R = Rotation.from_quat(q).as_matrix()
    moved = x @ R.T + rng.uniform(-3, 3, size=3)
    zero = torch.zeros(3, 3, dtype=torch.float64)
    assert (cv(torch.tensor(x), zero) - cv(torch.tensor(moved), zero)).abs().max().item() < 1e-5
    for k in range(2):
        p = torch.tensor(moved, requires_grad=True)
        (g,) = torch.autograd.grad(cv(p, zero)[k], p)
        F = -g.numpy()
        assert np.abs(F.sum(0)).max() < 1e-8
        assert np.abs(np.cross(moved, F).sum(0)).max() < 1e-7


class _Energy(torch.nn.Module):
    def __init__(self, cv, coef):
        super().__init__()
        self.cv = cv
        self.register_buffer("coef", torch.tensor(coef, dtype=torch.float64))

    def forward(self, positions):
        xi = self.cv(positions, torch.zeros(3, 3, dtype=positions.dtype))
        return (xi.to(torch.float64) * self.coef).sum()


def test_openmm_torchforce_matches(trained, tmp_path):
    cv, _ = load_cv(trained["path"])
    coef = [3.0, -2.0]  # kJ/mol per CV unit
    energy = torch.jit.script(_Energy(cv, coef))
    path = tmp_path / "energy.pt"
    energy.save(str(path))
    n = 22
    # one extra particle (as eABF adds): must be ignored by the CV
    x = np.vstack([trained["frames"][11], [[5.0, 5.0, 5.0]]])
    e_omm, f_omm = _torchforce_state(path, x, [12.0] * n + [1.0])
    ref = CVPipeline(trained["feat"], trained["model"], trained["scaling"])
    p = torch.tensor(x, requires_grad=True)
    xi = ref(p, torch.zeros(3, 3, dtype=torch.float64))
    e_py = (xi * torch.tensor(coef, dtype=torch.float64)).sum()
    (g,) = torch.autograd.grad(e_py, p)
    assert e_omm == pytest.approx(e_py.item(), abs=1e-4)
    assert np.abs(f_omm - (-g.numpy())).max() < 1e-3
    assert np.all(f_omm[n] == 0)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        load_cv(tmp_path / "nothere.pt")


class _PeriodicEnergy(torch.nn.Module):
    def __init__(self, cv):
        super().__init__()
        self.cv = cv

    def forward(self, positions, box):
        return 2.0 * self.cv(positions, box).sum()


def test_openmm_periodic_wrapped_positions(trained, tmp_path):
    """With periodic boundaries the TorchForce gets the box; wrapped coordinates give the same forces."""

    cv, _ = load_cv(trained["path"])
    energy = torch.jit.script(_PeriodicEnergy(cv))
    path = tmp_path / "penergy.pt"
    energy.save(str(path))
    box = np.diag([1.6, 1.7, 1.8])
    results = []
    x = trained["frames"][5] - trained["frames"][5].mean(0) + np.array([1.55, 1.65, 0.9])  # straddles x and y faces
    for positions in (x, x - np.floor(x / np.diag(box)) * np.diag(box)):
        results.append(_torchforce_state(path, positions, [12.0] * 22, box=box))
    assert np.abs(x - (x - np.floor(x / np.diag(box)) * np.diag(box))).max() > 1.0
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-8)
    assert np.abs(results[0][1] - results[1][1]).max() < 1e-6
    # and the frozen module (what openmm-torch runs on GPU platforms) agrees with the plain one
    frozen = torch.jit.freeze(torch.jit.load(str(trained["path"])).eval())
    p1 = torch.tensor(x, requires_grad=True)
    p2 = torch.tensor(x, requires_grad=True)
    b = torch.tensor(box)
    (g1,) = torch.autograd.grad(cv(p1, b).sum(), p1)
    (g2,) = torch.autograd.grad(frozen(p2, b).sum(), p2)
    assert (g1 - g2).abs().max().item() < 1e-10


def test_variational_model_exports_code_mean(tmp_path):
    import mdtraj as md

    t = md.load(str(PDB))
    idx = select_atoms(t.topology, "not element H")
    feat = AlignedPositions(idx, t.xyz[0, idx])
    torch.manual_seed(2)
    model = AutoEncoder(ModelSpec(n_features=30, hidden=(16, 8), n_cv=1, variational=True))
    cv = export_cv(feat, model, None, tmp_path / "vae.pt")
    x = torch.tensor(t.xyz[0], dtype=torch.float64)
    zero = torch.zeros(3, 3, dtype=torch.float64)
    with torch.no_grad():
        expected = model.encode(feat(x, zero).float()).double()
        assert cv.cv_dim == 1
        assert (cv(x, zero) - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid", "softplus", "silu", "elu", "gelu"])
def test_value_and_jacobian_matches_autograd(activation, tmp_path):
    """The closed-form Jacobian (for force modules that skip autograd) equals autograd's."""
    import mdtraj as md

    t = md.load(str(PDB))
    top = t.topology
    idx = select_atoms(top, default_selection(top))
    feat = AlignedPositions(idx, t.xyz[0, idx], spanning_tree_parents(top, idx))
    torch.manual_seed(3)
    model = AutoEncoder(ModelSpec(n_features=3 * len(idx), hidden=(16, 8), n_cv=2, activation=activation))
    from aesample.training import CVScaling

    cv = export_cv(feat, model, CVScaling(factor=[2.0, -0.5], shift=[0.1, 0.3]), tmp_path / "cv.pt")
    frozen = torch.jit.freeze(torch.jit.load(str(tmp_path / "cv.pt")).eval(), preserved_attrs=["value_and_jacobian"])
    rng = np.random.default_rng(1)
    box = np.diag([1.3, 1.4, 1.5])
    x = t.xyz[0].astype(np.float64) + rng.normal(scale=0.03, size=(22, 3))
    x = x - np.floor(x / np.diag(box)) * np.diag(box)  # wrapped: exercises the unwrap too
    for module in (cv, frozen):
        p = torch.tensor(x, requires_grad=True)
        b = torch.tensor(box)
        xi = cv(p, b)
        jac_auto = torch.stack([torch.autograd.grad(xi[k], p, retain_graph=True)[0] for k in range(2)])
        val, jac = module.value_and_jacobian(torch.tensor(x), b)
        assert (val - xi.detach()).abs().max().item() < 1e-10
        assert jac.shape == (2, len(idx), 3)
        assert (jac - jac_auto[:, idx]).abs().max().item() < 1e-9
    # float32 in -> float32 out
    val32, jac32 = cv.value_and_jacobian(torch.tensor(x, dtype=torch.float32), torch.tensor(box, dtype=torch.float32))
    assert val32.dtype == torch.float32 and jac32.dtype == torch.float32


def test_value_and_jacobian_with_the_power_rotation_matches_autograd(tmp_path):
    """The CUDA-graph route (rotation by power iteration, no host synchronisation) has the same closed form."""
    import mdtraj as md

    t = md.load(str(PDB))
    idx = select_atoms(t.topology, default_selection(t.topology))
    feat = AlignedPositions(idx, t.xyz[0, idx], periodic=False, rotation_solver="power")
    torch.manual_seed(4)
    cv = export_cv(feat, AutoEncoder(ModelSpec(n_features=3 * len(idx), hidden=(16,), n_cv=2)), None,
                   tmp_path / "cv.pt")
    x = t.xyz[0].astype(np.float64) + np.random.default_rng(2).normal(scale=0.03, size=(22, 3))
    p = torch.tensor(x, requires_grad=True)
    zero = torch.zeros(3, 3, dtype=torch.float64)
    xi = cv(p, zero)
    jac_auto = torch.stack([torch.autograd.grad(xi[k], p, retain_graph=True)[0] for k in range(2)])
    val, jac = cv.value_and_jacobian(torch.tensor(x), zero)
    assert (val - xi.detach()).abs().max().item() < 1e-10
    assert (jac - jac_auto[:, idx]).abs().max().item() < 1e-9


class _EnergyWithForces(torch.nn.Module):
    """E = sum_k c_k xi_k with forces from the closed-form Jacobian (TorchForce.setOutputsForces)."""

    def __init__(self, cv, coef):
        super().__init__()
        self.cv = cv
        self.register_buffer("coef", torch.tensor(coef, dtype=torch.float64))
        self.register_buffer("idx", cv.atom_indices.clone())

    def forward(self, positions):
        xi, jac = self.cv.value_and_jacobian(positions, torch.zeros(3, 3, dtype=positions.dtype))
        c = self.coef.to(positions.dtype)
        forces = torch.zeros_like(positions)
        forces.index_copy_(0, self.idx, -(c.reshape(-1, 1, 1) * jac).sum(0))
        return (xi * c).sum(), forces


def test_openmm_outputs_forces_route(trained, tmp_path):

    cv, _ = load_cv(trained["path"])
    results = []
    for with_forces in (False, True):
        module = torch.jit.script(_EnergyWithForces(cv, [3.0, -2.0]) if with_forces else _Energy(cv, [3.0, -2.0]))
        path = tmp_path / f"e{int(with_forces)}.pt"
        module.save(str(path))
        results.append(_torchforce_state(path, trained["frames"][13], [12.0] * 22, outputs_forces=with_forces))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-8)
    assert np.abs(results[0][1] - results[1][1]).max() < 1e-6


def test_cv_stiffness_of_known_gradients(trained):
    from aesample import cvs
    from aesample.export import cv_stiffness

    rng = np.random.default_rng(0)
    frames = rng.normal(size=(7, 3, 3))
    masses = np.array([4.0, 1.0, 0.0])  # a massless (virtual) site is skipped
    # xi = (x_1, y_1): |d xi_k/d x|^2 = 1 on particle 1 only -> 1 / m_1
    assert cv_stiffness(cvs.PositionXY(1), frames, masses) == pytest.approx(1.0)
    assert cv_stiffness(cvs.PositionX(0), frames, masses) == pytest.approx(0.25)

    class Sheared(torch.nn.Module):  # xi = (x_1, x_1 + y_1): overlapping gradients, G = [[1, 1], [1, 2]] / m_1
        def forward(self, pos, box):
            return torch.stack([pos[..., 1, 0], pos[..., 1, 0] + pos[..., 1, 1]], dim=-1)

    # the coupling's fastest mode is G's largest eigenvalue, (3 + sqrt 5) / 2, above both diagonal elements
    assert cv_stiffness(Sheared(), frames, masses) == pytest.approx((3 + np.sqrt(5)) / 2)
    # the learned CV: agrees with the closed-form Jacobian, frame by frame and component by component
    cv, _ = load_cv(trained["path"])
    frames = trained["frames"][:20]
    import mdtraj as md

    m = np.array([a.element.mass for a in md.load(str(PDB)).topology.atoms])
    expected = 0.0
    for x in frames:
        _, jac = cv.value_and_jacobian(torch.tensor(x), torch.zeros(3, 3, dtype=torch.float64))
        jw = jac.numpy() / np.sqrt(m[trained["idx"]])[None, :, None]  # (d, n_sel, 3), mass-weighted
        jw = jw.reshape(jw.shape[0], -1)
        expected = max(expected, float(np.linalg.eigvalsh(jw @ jw.T)[-1]))
    assert cv_stiffness(cv, frames, m) == pytest.approx(expected, rel=1e-9)
