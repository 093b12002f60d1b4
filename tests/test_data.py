"""Streaming trajectory reader and chunked featurisation."""
from pathlib import Path

import numpy as np
import pytest
import torch
from aesample.features import AlignedPositions, FeatureError, default_selection, select_atoms, spanning_tree_parents

from .trajdata import featurize_frames, featurize_trajectories, iter_trajectory, load_frames

PDB = Path(__file__).resolve().parents[1] / "aesample" / "data" / "alanine_dipeptide_vacuum.pdb"


@pytest.fixture(scope="module")
def trajs(tmp_path_factory):
    import mdtraj as md

    t = md.load(str(PDB))
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("traj")
    paths = []
    for k, (ext, n) in enumerate([("dcd", 37), ("xtc", 25)]):
        xyz = (t.xyz[0][None] + rng.normal(scale=0.02, size=(n, t.n_atoms, 3))).astype(np.float32)
        tr = md.Trajectory(xyz, t.topology)
        p = d / f"run{k}.{ext}"
        tr.save(str(p))
        paths.append(p)
    return t, paths


def test_streaming_equals_full_load(trajs):
    t, paths = trajs
    import mdtraj as md

    full = np.concatenate([md.load(str(p), top=str(PDB)).xyz for p in paths])
    chunks = list(iter_trajectory(paths, str(PDB), chunk_size=10))
    assert len(chunks) == 4 + 3
    assert np.array_equal(np.concatenate([c.xyz for c in chunks]), full)
    assert [c.start for c in chunks][:5] == [0, 10, 20, 30, 37]
    xyz, _ = load_frames(paths, str(PDB), stride=2)
    assert np.array_equal(xyz, np.concatenate([full[:37:2], full[37::2]]))


def test_featurize_trajectories_reads_selected_atoms_and_carries_weights(trajs):
    t, paths = trajs
    top = t.topology
    idx = select_atoms(top, default_selection(top))
    feat = AlignedPositions(idx, t.xyz[0, idx], spanning_tree_parents(top, idx))
    w = np.arange(62, dtype=float)
    f, wt = featurize_trajectories(feat, paths, str(PDB), weights=w, chunk_size=8)
    xyz, _ = load_frames(paths, str(PDB))
    expected = featurize_frames(feat, xyz)
    assert f.shape == (62, 30) and f.dtype == torch.float32
    assert (f.double() - expected).abs().max().item() < 1e-5
    assert np.array_equal(wt.numpy(), w)
    # unsorted selection order is preserved
    perm = idx[[3, 0, 7, 1, 2, 6, 4, 5]]
    feat2 = AlignedPositions(perm, t.xyz[0, perm])
    f2, _ = featurize_trajectories(feat2, paths[0], str(PDB), chunk_size=16)
    assert (f2.double() - featurize_frames(feat2, xyz[:37])).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="weights has 10 entries"):
        featurize_trajectories(feat, paths, str(PDB), weights=np.ones(10))


def test_nan_frame_named(trajs, tmp_path):
    import mdtraj as md

    t, _ = trajs
    xyz = np.repeat(t.xyz, 5, axis=0)
    xyz[3, 4, 0] = np.nan
    p = tmp_path / "bad.dcd"
    md.Trajectory(xyz, t.topology).save(str(p))
    with pytest.raises(FeatureError, match=r"bad.dcd: frame 3 contains NaN"):
        list(iter_trajectory(p, str(PDB)))


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.dcd"):
        list(iter_trajectory(tmp_path / "nope.dcd", str(PDB)))
