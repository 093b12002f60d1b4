"""Export of a trained encoder as a TorchScript collective variable.

The exported module follows the project's CV TorchScript contract::

    forward(positions: Tensor (N, 3) | (B, N, 3) nm, box: Tensor (3, 3) | (B, 3, 3) nm) -> xi (d,) | (B, d)

with attributes ``cv_dim`` (int), ``atom_indices`` (long tensor) and ``periodic``
(``[False] * d``).  Atom selection, unwrapping, alignment onto the reference, feature
standardisation, the encoder and the CV scaling are all baked in.  To keep the MD hot
path short, the standardisation is folded into the first linear layer and the scaling
into the last one (an exact algebraic rewrite).  Output dtype = input dtype; the
computation itself runs in the module's dtype (float64 by default).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from .features import AlignedPositions
from .io import atomic_write_bytes
from .models import AutoEncoder
from .training import CVScaling

__all__ = ["ExportedCV", "build_cv_module", "export_cv", "load_cv", "compute_cv", "cv_stiffness"]


class ExportedCV(nn.Module):
    """TorchScript-able CV: featurizer (standardisation folded away) + folded encoder.

    Hot path (one frame, gradient wanted, ``method="implicit"``): the aligned features
    are ``M x`` with ``M`` built without autograd, so the first encoder layer is applied
    as ``(W1 M) x + b1`` -- one autograd node for alignment and first layer together.
    Other inputs take the general path ``encoder(features(x, box))``.
    """

    __constants__ = ["cv_dim", "fused", "linear_features", "activation_code"]

    def __init__(self, featurizer: AlignedPositions, encoder: nn.Sequential, cv_dim: int, activation: str = "tanh"):
        super().__init__()
        if activation not in _ACTIVATION_CODES:
            raise ValueError(f"activation {activation!r} has no analytic derivative; choose one of {sorted(_ACTIVATION_CODES)}")
        self.activation_code = _ACTIVATION_CODES[activation]
        self.linear_features = featurizer.method == "implicit"
        lins = _linear_layers(encoder)
        self.weights = [l.weight.detach().clone() for l in lins]
        self.biases = [l.bias.detach().clone() for l in lins]
        self.features = featurizer
        self.encoder = encoder
        # first Linear and the remaining layers, for the fused hot path
        self.head = encoder[0]
        self.tail = nn.Sequential(*list(encoder)[1:])
        self.fused = bool(featurizer.method == "implicit" and not featurizer.standardize)
        self.cv_dim = int(cv_dim)
        self.periodic = [False] * int(cv_dim)
        self.register_buffer("atom_indices", featurizer.atom_indices.clone())
        # the first layer's weights centred over the atoms, as (h1 n, 3) rows (W1 C, C the centring): with them the
        # closed-form Jacobian (value_and_jacobian) never forms the (3n, 3n) alignment map
        w1 = self.weights[0].reshape(self.weights[0].shape[0], -1, 3)
        self.register_buffer("w1_centred", (w1 - w1.mean(dim=1, keepdim=True)).reshape(-1, 3).contiguous())

    def forward(self, positions: Tensor, box: Tensor) -> Tensor:
        x = positions.to(self.features.reference.dtype)
        if self.fused and x.dim() == 2 and x.requires_grad:
            xs = x.index_select(0, self.atom_indices)
            b = box.to(x.dtype)
            if self.features._needs_unwrap(b):
                xs = xs + self.features._unwrap_offset(xs.unsqueeze(0), b.reshape(1, 3, 3))[0]
            M = self.features._implicit_map_no_grad(xs.unsqueeze(0))[0]
            W = self._no_grad_mm(self.head.weight, M)
            xi = self.tail(torch.addmv(self.head.bias, W, xs.reshape(-1)))
        else:
            xi = self.encoder(self.features(x, box))
        return xi.to(positions.dtype)

    @torch.jit.export
    def value_and_jacobian(self, positions: Tensor, box: Tensor) -> Tuple[Tensor, Tensor]:
        """CV and its Jacobian for one frame, computed in closed form without autograd.

        Parameters
        ----------
        positions : Tensor (N, 3), nm
        box : Tensor (3, 3), nm (all zeros: not periodic)

        Returns
        -------
        xi : Tensor (d,)
        jacobian : Tensor (d, n_sel, 3)
            ``d xi_k / d positions[atom_indices[i], a]``; every other particle has zero
            derivative.  Meant for force modules that set ``setOutputsForces(True)``
            and skip the autograd engine (forces on atom ``atom_indices[i]`` from a
            potential U(xi) are ``-sum_k dU/dxi_k * jacobian[k, i]``).  Only for the
            ``implicit`` alignment (whose features are a linear map ``M x``).
        """
        if not self.linear_features:
            raise RuntimeError("value_and_jacobian needs the 'implicit' alignment method")
        with torch.no_grad():
            x = positions.to(self.features.reference.dtype)
            xs = x.index_select(0, self.atom_indices)
            b = box.to(x.dtype)
            if self.features._needs_unwrap(b):
                xs = xs + self.features._unwrap_offset(xs.unsqueeze(0), b.reshape(1, 3, 3))[0]
            J = self._first_layer_jacobian(xs)  # (h1, 3n): d(pre-activation) / dx
            h = torch.addmv(self.biases[0], J, xs.reshape(-1))
            for i in range(1, len(self.weights)):
                y, dy = self._activation_and_derivative(h)
                J = torch.matmul(self.weights[i], dy.unsqueeze(1) * J)
                h = torch.mv(self.weights[i], y) + self.biases[i]
        return h.to(positions.dtype), J.reshape(self.cv_dim, -1, 3).to(positions.dtype)

    def _first_layer_jacobian(self, xs: Tensor) -> Tensor:
        """W1 M (h1, 3n) for one frame of the selected atoms xs (n, 3), M the implicit alignment's linear map.

        With M = K - P Q K from ``AlignedPositions._frame_factors`` (K = C kron R0), M is never formed: W1 K is
        the atom-centred W1 rotated by R0, and Q K is Q rotated by R0 (Q's atom blocks sum to zero). Equal to
        ``W1 @ M`` up to rounding.
        """
        R0, P, Q = self.features._frame_factors(xs)
        QK = torch.mm(Q.view(-1, 3), R0).view(3, -1)
        W1K = torch.mm(self.w1_centred, R0).view(self.weights[0].shape[0], -1)
        return W1K - torch.mm(torch.mm(self.weights[0], P), QK)

    def _activation_and_derivative(self, h: Tensor) -> Tuple[Tensor, Tensor]:
        c = self.activation_code
        if c == 0:
            y = torch.tanh(h)
            return y, 1.0 - y * y
        if c == 1:
            return torch.relu(h), (h > 0).to(h.dtype)
        if c == 2:
            y = torch.sigmoid(h)
            return y, y * (1.0 - y)
        if c == 3:
            s = torch.sigmoid(h)
            return torch.nn.functional.softplus(h), s
        if c == 4:
            s = torch.sigmoid(h)
            return h * s, s * (1.0 + h * (1.0 - s))
        if c == 5:
            y = torch.nn.functional.elu(h)
            return y, torch.where(h > 0, torch.ones_like(h), y + 1.0)
        # gelu (exact): Phi(h) + h phi(h)
        cdf = 0.5 * (1.0 + torch.erf(h * 0.7071067811865476))
        pdf = torch.exp(-0.5 * h * h) * 0.3989422804014327
        return h * cdf, cdf + h * pdf

    def _no_grad_mm(self, a: Tensor, b: Tensor) -> Tensor:
        with torch.no_grad():
            c = torch.matmul(a, b)
        return c


_ACTIVATION_CODES = {"tanh": 0, "relu": 1, "sigmoid": 2, "softplus": 3, "silu": 4, "elu": 5, "gelu": 6}


def _linear_layers(seq: nn.Sequential) -> List[nn.Linear]:
    return [m for m in seq if isinstance(m, nn.Linear)]


def build_cv_module(
    featurizer: AlignedPositions,
    model: AutoEncoder,
    scaling: Optional[CVScaling] = None,
    dtype: torch.dtype = torch.float64,
) -> ExportedCV:
    """Assemble the (not yet scripted) CV module with standardisation and scaling folded in.

    Parameters
    ----------
    featurizer : AlignedPositions
        The featurizer used in training (its standardisation, if any, is folded).
    model : AutoEncoder
        Trained model; its :meth:`~AutoEncoder.cv_encoder` is used.
    scaling : CVScaling, optional
        Affine map of each CV component (e.g. to [-1, 1]); identity when None.
    dtype : torch.dtype
        Compute dtype of the exported module (float64 default; float32 possible).
    """
    feat = copy.deepcopy(featurizer).to(dtype)
    enc = copy.deepcopy(model.cv_encoder()).to(dtype)
    lins = _linear_layers(enc)
    if not lins or not isinstance(enc[0], nn.Linear) or not isinstance(enc[-1], nn.Linear):
        raise TypeError("the CV encoder must start and end with nn.Linear layers to fold standardisation and scaling")
    with torch.no_grad():
        if feat.standardize:
            # W ((f - m) / s) + b = (W / s) f + (b - (W / s) m)
            first = enc[0]
            w = first.weight / feat.std.to(dtype)
            first.bias.copy_(first.bias - w @ feat.mean.to(dtype))
            first.weight.copy_(w)
            feat.set_standardization(None, None)
        if scaling is not None:
            last = enc[-1]
            fac = torch.as_tensor(scaling.factor, dtype=dtype)
            sh = torch.as_tensor(scaling.shift, dtype=dtype)
            if fac.numel() != last.out_features:
                raise ValueError(f"scaling has {fac.numel()} components but the encoder outputs {last.out_features}")
            last.weight.copy_(last.weight * fac[:, None])
            last.bias.copy_(last.bias * fac + sh)
    for p in enc.parameters():
        p.requires_grad_(False)
    return ExportedCV(feat, enc, lins[-1].out_features, activation=model.spec.activation).eval()


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.ndarray, Tensor)):
        return np.asarray(o).tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def export_cv(
    featurizer: AlignedPositions,
    model: AutoEncoder,
    scaling: Optional[CVScaling],
    path: Union[str, Path],
    metadata: Optional[Dict[str, Any]] = None,
    dtype: torch.dtype = torch.float64,
) -> torch.jit.ScriptModule:
    """Script, save (``path``, e.g. ``encoder.pt``) and describe (``path`` with ``.json``) the CV.

    Parameters
    ----------
    featurizer, model, scaling, dtype
        See :func:`build_cv_module`.
    path : str or Path
        Output file of ``torch.jit.save``; the metadata go to the same name with suffix ``.json``.
    metadata : dict, optional
        Extra JSON-serialisable entries (e.g. ``selection`` string, ``training`` summary);
        atom indices, architecture, alignment method and scaling are always recorded.

    Returns
    -------
    torch.jit.ScriptModule
        The scripted CV (also written to ``path``). Files are written atomically.
    """
    path = Path(path)
    module = torch.jit.script(build_cv_module(featurizer, model, scaling, dtype=dtype))
    import io

    buf = io.BytesIO()
    torch.jit.save(module, buf)
    atomic_write_bytes(path, buf.getvalue())
    meta: Dict[str, Any] = {
        "format": "aesample-cv/1",
        "cv_dim": int(module.cv_dim),
        "periodic": [False] * int(module.cv_dim),
        "atom_indices": featurizer.atom_indices.tolist(),
        "unwrap_parents": featurizer.parents.tolist(),
        "alignment": featurizer.method,
        "rotation_solver": "power" if featurizer.power_solver else "eigh",
        "unwrap": {0: "auto (box != 0)", 1: "always", 2: "never"}[featurizer.box_mode] if featurizer.unwrap else "never",
        "reference_nm": featurizer.reference.tolist(),
        "architecture": model.spec.to_dict(),
        "scaling": None if scaling is None else scaling.to_dict(),
        "dtype": str(dtype).replace("torch.", ""),
    }
    if metadata:
        meta.update(metadata)
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(meta, indent=2, default=_json_default).encode())
    return module


def load_cv(path: Union[str, Path], map_location: str = "cpu") -> Tuple[torch.jit.ScriptModule, Dict[str, Any]]:
    """Load an exported CV and its metadata (empty dict when the ``.json`` file is absent)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CV module file not found: {path}")
    module = torch.jit.load(str(path), map_location=map_location)
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return module, meta


def compute_cv(
    cv: nn.Module,
    frames: Union[np.ndarray, Tensor, Iterable],
    box: Optional[Union[np.ndarray, Tensor]] = None,
    chunk_size: int = 4096,
    dtype: torch.dtype = torch.float64,
) -> np.ndarray:
    """CV values on many frames, evaluated in chunks without gradients.

    Parameters
    ----------
    cv : module following the CV contract (exported, or any module taking (positions, box))
    frames : array (T, N, 3) nm, or an iterable of chunks, each an array (t, N, 3) or a
        tuple ``(xyz, box_or_None)`` / an object with ``xyz`` and ``box`` attributes.
    box : array (3, 3) or (T, 3, 3) nm, optional (array input only); None = non-periodic.
    chunk_size : frames per evaluation for array input.

    Returns
    -------
    numpy array (T, d)
    """

    def chunks():
        if isinstance(frames, (np.ndarray, Tensor)):
            arr = frames
            T = arr.shape[0]
            for s in range(0, T, chunk_size):
                b = None
                if box is not None:
                    bb = box if isinstance(box, Tensor) else np.asarray(box)
                    b = bb if bb.ndim == 2 else bb[s : s + chunk_size]
                yield arr[s : s + chunk_size], b
        else:
            for item in frames:
                if hasattr(item, "xyz"):
                    yield item.xyz, getattr(item, "box", None)
                elif isinstance(item, tuple):
                    yield item[0], item[1]
                else:
                    yield item, None

    out = []
    with torch.no_grad():
        for xyz, b in chunks():
            x = torch.as_tensor(np.asarray(xyz) if not isinstance(xyz, Tensor) else xyz).to(dtype)
            if x.dim() == 2:
                x = x.unsqueeze(0)
            bt = torch.zeros(3, 3, dtype=dtype) if b is None else torch.as_tensor(np.asarray(b) if not isinstance(b, Tensor) else b).to(dtype)
            out.append(cv(x, bt).detach().cpu().numpy())
    if not out:
        return np.zeros((0, int(getattr(cv, "cv_dim", 0))))
    return np.concatenate(out, axis=0)


def cv_stiffness(cv: nn.Module, frames: np.ndarray, masses: np.ndarray, box: Optional[np.ndarray] = None) -> float:
    """Largest eigenvalue over frames of the CV's mass-weighted metric, (CV unit)^2 / (nm^2 amu):
    ``G_kl = sum_i (d xi_k/d x_i . d xi_l/d x_i) / m_i``.

    A coupling ``kappa/2 |xi - lambda|^2`` adds ``kappa J^T J`` to the mass-weighted Hessian of the atoms; its
    non-zero eigenvalues are those of ``kappa G``, so the atoms oscillate with angular frequency up to
    ``sqrt(kappa * stiffness)`` (1/ps for kappa in kJ/mol/(CV unit)^2): the fastest motion the CV force adds,
    which the integrator's (outer) time step must resolve. For a 1D CV, ``G`` is ``|grad xi|^2 / m``; for
    components whose gradients overlap, the largest eigenvalue exceeds every diagonal element (up to their sum).

    Parameters
    ----------
    cv : module following the CV contract
    frames : array (T, N, 3), nm (all particles of the system, as the CV sees them in OpenMM)
    masses : array (N,), amu (massless particles are skipped)
    box : array (3, 3) or (T, 3, 3), nm, optional
    """
    x = torch.as_tensor(np.asarray(frames, dtype=np.float64)).clone().requires_grad_(True)
    if x.dim() == 2:
        x = x.unsqueeze(0)
    bt = torch.zeros(3, 3, dtype=torch.float64) if box is None else torch.as_tensor(np.asarray(box, dtype=np.float64))
    xi = cv(x, bt)
    m = torch.as_tensor(np.asarray(masses, dtype=np.float64))
    inv_m = torch.where(m > 0, 1.0 / m.clamp(min=1e-12), torch.zeros_like(m))
    d = xi.shape[-1]
    scale = inv_m.sqrt()[None, :, None]  # mass weighting of each atom's gradient
    grads = []
    for k in range(d):
        (g,) = torch.autograd.grad(xi[:, k].sum(), x, retain_graph=k + 1 < d)
        grads.append(g * scale)  # (T, N, 3)
    j = torch.stack(grads, dim=1).reshape(x.shape[0], d, -1)  # (T, d, 3N)
    metric = j @ j.transpose(1, 2)  # (T, d, d), symmetric positive semi-definite
    return float(torch.linalg.eigvalsh(metric)[:, -1].max())
