"""Featurisation: invariance, alignment correctness, periodic unwrapping, gradients, bad input."""
from pathlib import Path

import numpy as np
import pytest
import torch

from aesample.selection import SelectionError
from aesample.features import (
    ALIGNMENT_METHODS,
    AlignedPositions,
    FeatureError,
    check_frames_finite,
    default_selection,
    select_atoms,
    spanning_tree_parents,
)

from .oracles import kabsch_rotation_numpy

PDB = Path(__file__).resolve().parents[1] / "aesample" / "data" / "alanine_dipeptide_vacuum.pdb"


@pytest.fixture(scope="module")
def ala():
    import mdtraj as md

    t = md.load(str(PDB))
    top = t.topology
    idx = select_atoms(top, default_selection(top))
    parents = spanning_tree_parents(top, idx)
    return t.xyz[0].astype(np.float64), top, idx, parents


def random_rotation(rng):
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def test_default_selection_is_30_inputs(ala):
    _, top, idx, parents = ala
    assert len(idx) == 10 and "CB" in {top.atom(i).name for i in idx}
    assert not any(top.atom(i).element.symbol == "H" for i in idx)
    assert parents[0] == -1 and np.all(parents[1:] >= 0) and np.all(parents[1:] < np.arange(1, 10))


@pytest.mark.parametrize("method", ALIGNMENT_METHODS)
def test_alignment_matches_kabsch_and_is_invariant(ala, method):
    x0, top, idx, parents = ala
    rng = np.random.default_rng(0)
    ref = x0[idx] + rng.normal(scale=0.02, size=(len(idx), 3))
    feat = torch.jit.script(AlignedPositions(idx, ref, parents, method=method))
    zero = torch.zeros(3, 3, dtype=torch.float64)
    for trial in range(3):
        x = x0 + rng.normal(scale=0.03, size=x0.shape)
        R = random_rotation(rng)
        moved = x @ R.T + rng.normal(scale=2.0, size=3)
        f1 = feat(torch.tensor(x), zero)
        f2 = feat(torch.tensor(moved), zero)
        assert (f1 - f2).abs().max().item() < 1e-5
        Rk = kabsch_rotation_numpy(x[idx], ref)
        expected = ((x[idx] - x[idx].mean(0)) @ Rk.T).ravel()
        assert np.abs(f1.numpy() - expected).max() < 1e-8
    # float32 input -> float32 output, same values
    f32 = feat(torch.tensor(moved, dtype=torch.float32), zero.float())
    assert f32.dtype == torch.float32 and (f32.double() - f2).abs().max().item() < 1e-5
    # batched == unbatched
    fb = feat(torch.tensor(np.stack([x, moved])), torch.zeros(2, 3, 3, dtype=torch.float64))
    assert fb.shape == (2, 3 * len(idx)) and (fb[1] - f2).abs().max().item() < 1e-12


def test_reflection_gives_proper_rotation(ala):
    """A mirror image must not be 'aligned' by an improper rotation (det = -1)."""
    x0, top, idx, parents = ala
    rng = np.random.default_rng(5)
    x0 = x0 + rng.normal(scale=0.05, size=x0.shape)  # the PDB backbone is planar: make it chiral
    feat = AlignedPositions(idx, x0[idx], parents)
    mirrored = x0 * np.array([1.0, 1.0, -1.0])
    f = feat(torch.tensor(mirrored), torch.zeros(3, 3, dtype=torch.float64)).numpy().reshape(-1, 3)
    xc = mirrored[idx] - mirrored[idx].mean(0)
    # f = xc R^T for some R; recover R by least squares and check it is a proper rotation
    R = np.linalg.lstsq(xc, f, rcond=None)[0].T
    assert np.allclose(R @ R.T, np.eye(3), atol=1e-8)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("method", ALIGNMENT_METHODS)
def test_gradients_match_finite_differences(ala, method):
    x0, top, idx, parents = ala
    rng = np.random.default_rng(1)
    feat = AlignedPositions(idx, x0[idx], parents, method=method)
    x = x0 + rng.normal(scale=0.03, size=x0.shape)
    c = torch.tensor(rng.normal(size=3 * len(idx)))
    zero = torch.zeros(3, 3, dtype=torch.float64)
    p = torch.tensor(x, requires_grad=True)
    (g,) = torch.autograd.grad((feat(p, zero) * c).sum(), p)
    h = 1e-6
    for i in idx[[0, 3, 7]]:
        for a in range(3):
            xp, xm = x.copy(), x.copy()
            xp[i, a] += h
            xm[i, a] -= h
            fd = ((feat(torch.tensor(xp), zero) - feat(torch.tensor(xm), zero)) * c).sum().item() / (2 * h)
            assert g[i, a].item() == pytest.approx(fd, abs=1e-6)
    # atoms outside the selection get no gradient
    others = np.setdiff1d(np.arange(len(x0)), idx)
    assert torch.all(g[others] == 0)


@pytest.mark.parametrize("method", ["implicit", "power"])
def test_degenerate_alignment_has_finite_gradient(ala, method):
    x0, top, idx, parents = ala
    feat = AlignedPositions(idx, x0[idx], parents, method=method)
    collinear = np.zeros_like(x0)
    collinear[:, 0] = np.arange(len(x0)) * 0.1
    p = torch.tensor(collinear, requires_grad=True)
    (g,) = torch.autograd.grad(feat(p, torch.zeros(3, 3, dtype=torch.float64)).sum(), p)
    assert torch.isfinite(g).all()


def test_net_force_and_torque_vanish(ala):
    x0, top, idx, parents = ala
    rng = np.random.default_rng(2)
    feat = AlignedPositions(idx, x0[idx], parents)
    c = torch.tensor(rng.normal(size=3 * len(idx)))
    x = x0 + rng.normal(scale=0.05, size=x0.shape)
    p = torch.tensor(x, requires_grad=True)
    (g,) = torch.autograd.grad((feat(p, torch.zeros(3, 3, dtype=torch.float64)) * c).sum(), p)
    F = -g.numpy()
    assert np.abs(F.sum(0)).max() < 1e-10
    torque = np.cross(x, F).sum(0)
    assert np.abs(torque).max() < 1e-8


@pytest.mark.parametrize("method", ["implicit", "svd"])
def test_periodic_split_molecule_equals_whole(ala, method):
    x0, top, idx, parents = ala
    feat = torch.jit.script(AlignedPositions(idx, x0[idx], parents, method=method))
    box = np.array([[1.5, 0.0, 0.0], [0.3, 1.4, 0.0], [-0.2, 0.4, 1.3]])  # reduced triclinic
    x = x0 - x0.mean(0) + box.sum(0) * 0.98  # molecule straddles the box corner
    # wrap every atom independently into the box (as a GPU platform would hand them)
    frac = x @ np.linalg.inv(box)
    wrapped = (frac - np.floor(frac)) @ box
    assert np.abs(wrapped - x).max() > 0.5  # really split
    f_whole = feat(torch.tensor(x), torch.zeros(3, 3, dtype=torch.float64))
    f_wrap = feat(torch.tensor(wrapped), torch.tensor(box))
    assert (f_whole - f_wrap).abs().max().item() < 1e-8
    # gradient identical too
    p1 = torch.tensor(x, requires_grad=True)
    p2 = torch.tensor(wrapped, requires_grad=True)
    (g1,) = torch.autograd.grad(feat(p1, torch.zeros(3, 3, dtype=torch.float64)).sum(), p1)
    (g2,) = torch.autograd.grad(feat(p2, torch.tensor(box)).sum(), p2)
    assert (g1 - g2).abs().max().item() < 1e-8


def test_standardization_fit(ala):
    x0, top, idx, parents = ala
    rng = np.random.default_rng(3)
    feat = AlignedPositions(idx, x0[idx], parents)
    frames = torch.tensor(x0[None] + rng.normal(scale=0.02, size=(200,) + x0.shape))
    raw = feat(frames, torch.zeros(3, 3, dtype=torch.float64))
    feat.fit_standardization(raw)
    z = feat(frames, torch.zeros(3, 3, dtype=torch.float64))
    assert z.mean(0).abs().max().item() < 1e-10
    assert (z.std(0, unbiased=False) - 1).abs().max().item() < 1e-6


def test_empty_selection_error_names_string(ala):
    _, top, _, _ = ala
    with pytest.raises(SelectionError, match=r"cv.selection: atom selection 'name XYZ' matches no atom"):
        select_atoms(top, "name XYZ", what="cv.selection")
    with pytest.raises(SelectionError, match="cannot parse atom selection 'name CA and and'"):
        select_atoms(top, "name CA and and")


def test_reference_atom_count_mismatch(ala):
    x0, top, idx, parents = ala
    with pytest.raises(FeatureError, match=r"reference has 7 atoms but the selection has 10 atoms"):
        AlignedPositions(idx, x0[idx[:7]], parents)


def test_nan_frames_are_reported():
    frames = np.zeros((5, 4, 3))
    frames[3, 2, 1] = np.nan
    with pytest.raises(FeatureError, match=r"frames: frame 3 contains NaN"):
        check_frames_finite(frames)


@pytest.mark.parametrize("periodic", [None, True, False])
@pytest.mark.parametrize("solver", ["eigh", "power"])
def test_periodic_modes_and_power_solver(ala, periodic, solver):
    """periodic=True (sync-free, always unwrap) is exact for zero and non-zero boxes;
    the matrix-product rotation solver gives the same features and gradients as eigh."""
    x0, top, idx, parents = ala
    rng = np.random.default_rng(7)
    ref = x0[idx] + rng.normal(scale=0.02, size=(len(idx), 3))
    base = AlignedPositions(idx, ref, parents)
    feat = torch.jit.script(AlignedPositions(idx, ref, parents, periodic=periodic, rotation_solver=solver))
    x = x0 + rng.normal(scale=0.03, size=x0.shape)
    zero = torch.zeros(3, 3, dtype=torch.float64)
    for pos, box in [(x, zero), (x - np.floor(x / 1.2) * 1.2, torch.tensor(np.diag([1.2, 1.2, 1.2])))]:
        if periodic is False and box.abs().sum() > 0:
            continue
        p1 = torch.tensor(x, requires_grad=True)
        p2 = torch.tensor(pos, requires_grad=True)
        f1 = base(p1, zero)
        f2 = feat(p2, box)
        assert (f1 - f2).abs().max().item() < 1e-9
        (g1,) = torch.autograd.grad(f1.sum(), p1)
        (g2,) = torch.autograd.grad(f2.sum(), p2)
        assert (g1 - g2).abs().max().item() < 1e-8
    with pytest.raises(FeatureError, match="rotation_solver must be"):
        AlignedPositions(idx, ref, rotation_solver="qr")


@pytest.mark.parametrize("solver", ["eigh", "power"])
def test_one_frame_factors_equal_the_batched_ones_and_rebuild_the_map(ala, solver):
    """The one-frame factors (the exported CV's per-step path) equal the batched ones, and K - P Q K is M."""
    x0, top, idx, parents = ala
    rng = np.random.default_rng(8)
    feat = AlignedPositions(idx, x0[idx], parents, rotation_solver=solver)  # eager: the helpers are not exported
    x = torch.tensor(x0[idx] + rng.normal(scale=0.05, size=(len(idx), 3)))
    with torch.no_grad():
        one = feat._frame_factors(x)
        batched = feat._implicit_factors(x.unsqueeze(0))
        M = feat._implicit_map(x.unsqueeze(0))[0]
    for a, b in zip(one, batched):
        assert a.shape == b.shape[1:] and (a - b[0]).abs().max().item() < 1e-12
    R0, P, Q = one
    n = len(idx)
    K = torch.kron(torch.eye(n, dtype=torch.float64) - 1.0 / n, R0)
    assert (K - P @ (Q @ K) - M).abs().max().item() < 1e-12
    assert not torch.allclose(P @ (Q @ K), torch.zeros_like(K))  # the rotation's response term is really there
