"""A learned CV of the loop's architecture for the tests (random weights)."""

from __future__ import annotations


def make_learned_cv(ms, path, rotation_solver: str = "eigh", scale: float = 0.02, n_frames: int = 32):
    """A CV of the loop's architecture on the loop's featurizer for ``ms`` (random weights: the ops are what
    matter), exported to ``path`` and loaded back as the loop loads it."""
    import numpy as np
    import torch

    from aesample.export import export_cv, load_cv
    from aesample.features import AlignedPositions
    from aesample.models import AutoEncoder, ModelSpec
    from aesample.training import fit_cv_scaling

    idx = np.asarray(ms.mdtraj_topology.select(ms.selection))
    feat = AlignedPositions(idx, ms.positions[idx], periodic=False, rotation_solver=rotation_solver)
    torch.manual_seed(1)
    model = AutoEncoder(ModelSpec(n_features=3 * len(idx), hidden=(40,), n_cv=2)).double()
    rng = np.random.default_rng(0)
    frames = torch.as_tensor(ms.positions[None] + rng.normal(scale=scale, size=(n_frames,) + ms.positions.shape))
    with torch.no_grad():
        code = model.encode(feat(frames, torch.zeros(n_frames, 3, 3, dtype=torch.float64)))
    export_cv(feat, model, fit_cv_scaling(code), path)
    return load_cv(path)[0]
