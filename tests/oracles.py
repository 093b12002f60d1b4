"""Reference implementations the tests check the library against (not shipped with the package)."""

from __future__ import annotations

from typing import Optional

import numpy as np
from torch import Tensor, nn

from aesample.features import AlignedPositions
from aesample.models import AutoEncoder
from aesample.training import CVScaling

__all__ = ["CVPipeline", "kabsch_rotation_numpy"]


class CVPipeline(nn.Module):
    """Un-folded reference pipeline (Python): scaling(encode(featurizer(positions, box))).

    Used to check the exported module; featurizer standardisation is applied as stored.
    """

    def __init__(self, featurizer: AlignedPositions, model: AutoEncoder, scaling: Optional[CVScaling] = None):
        super().__init__()
        self.featurizer = featurizer
        self.model = model
        self.scaling = scaling

    def forward(self, positions: Tensor, box: Tensor) -> Tensor:
        f = self.featurizer(positions, box)
        p = next(self.model.parameters())
        z = self.model.encode(f.to(p.dtype))
        if self.scaling is not None:
            z = z * self.scaling.factor_tensor(z) + self.scaling.shift_tensor(z)
        return z.to(positions.dtype)


def kabsch_rotation_numpy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Reference Kabsch rotation (numpy) with y_c ~= x_c @ R^T."""
    xc = x - x.mean(0)
    yc = y - y.mean(0)
    U, _, Vt = np.linalg.svd(xc.T @ yc)
    d = np.sign(np.linalg.det(Vt.T @ U.T))
    return Vt.T @ np.diag([1.0, 1.0, d]) @ U.T
