"""Roto-translation invariant featurisation of molecular coordinates, in torch.

One implementation serves both the training pipeline (batched, on frames read from
trajectories) and the exported collective variable evaluated every MD step inside
OpenMM (unbatched, through ``openmmtorch.TorchForce``).  Keeping a single module is
what guarantees that the features seen during training and inside MD never drift
apart.

Pipeline of :class:`AlignedPositions` (differentiable w.r.t. positions):

1. pick the selected atoms from the full system (``index_select`` on baked-in indices);
2. if the box is non-zero, make the selection whole by minimum-image steps along a
   spanning tree of the selected atoms (OpenMM hands wrapped coordinates on GPUs);
3. centre on the geometric mean;
4. rotate optimally (least squares, proper rotations only) onto a centred reference;
5. flatten to ``n_sel * 3`` features and optionally standardise them.

Optimal rotation
----------------
Four interchangeable methods compute the rotation (``method=``); all give the same
values and first derivatives (tested against each other and finite differences):

``"implicit"`` (default, fastest with gradients)
    The rotation is computed without autograd (``eigh`` of Horn's matrix, below) and
    the derivative of the optimal rotation is supplied analytically through the
    implicit function theorem applied to the optimality condition, which makes the
    aligned features a *linear* map of the selected coordinates around the current
    configuration (see :meth:`AlignedPositions._implicit_features`).  The autograd
    graph of the alignment is then a single matrix product.  Exact values and first
    derivatives; no second derivatives.  Degenerate alignments give finite gradients.
    The no-autograd parts run in ``torch.no_grad()`` blocks, *not* via ``detach()``:
    ``torch.jit.freeze`` (which openmm-torch applies) deletes ``detach`` calls.
``"power"``
    Horn's 4x4 quaternion matrix ``K`` is built with one matrix product from the
    3x3 correlation matrix.  Its top eigenvector ``q`` defines the rotation, and the
    rotation matrix is *quadratic* in ``q``, i.e. linear in the projector ``q q^T``.
    That projector is obtained as the normalised high power ``A^m / tr(A^m)`` of the
    shifted matrix ``A = K + sigma I`` (``sigma`` bounds the spectrum so ``A`` is
    positive semi-definite), computed by repeated squaring.  Consequences: only
    matrix products (a handful of TorchScript ops, cheap backward), no sign
    ambiguity of eigenvectors, proper rotations by construction (quaternions), and
    no ``1/(lambda_i - lambda_j)`` factors in the gradient, so degenerate or
    near-degenerate alignments (linear or symmetric selections) give finite
    gradients instead of NaN.
``"eigh"``
    Same quaternion formulation with ``torch.linalg.eigh`` of ``K``.
``"svd"``
    Kabsch: SVD of the 3x3 correlation matrix with the determinant sign correction.

``benchmarks/cv_speed.py`` measures their forward+backward cost.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .selection import default_selection
from .selection import select_atoms as _select_atoms

__all__ = [
    "AlignedPositions",
    "FeatureError",
    "ALIGNMENT_METHODS",
    "default_selection",
    "select_atoms",
    "spanning_tree_parents",
    "check_frames_finite",
    "validate_reference",
]

ALIGNMENT_METHODS = ("implicit", "power", "eigh", "svd")
_METHOD_CODE = {"power": 0, "eigh": 1, "svd": 2, "implicit": 3}


class FeatureError(ValueError):
    """Invalid input to the featurisation (selection, reference, frames)."""


# ---------------------------------------------------------------------------------
# constant tensors of the quaternion formulation
# ---------------------------------------------------------------------------------
def _horn_matrix_map() -> np.ndarray:
    """(16, 9) map from vec(S) (S[i, j] = sum_k x_ki y_kj) to vec(K), Horn's matrix.

    The top eigenvector of K is the unit quaternion of the rotation R minimising
    sum_k |R x_k - y_k|^2.
    """
    M = np.zeros((4, 4, 3, 3))
    xx, xy, xz, yx, yy, yz, zx, zy, zz = [(i, j) for i in range(3) for j in range(3)]

    def put(a, b, terms):
        for sign, ij in terms:
            M[a, b][ij] += sign

    put(0, 0, [(1, xx), (1, yy), (1, zz)])
    put(0, 1, [(1, yz), (-1, zy)])
    put(0, 2, [(1, zx), (-1, xz)])
    put(0, 3, [(1, xy), (-1, yx)])
    put(1, 1, [(1, xx), (-1, yy), (-1, zz)])
    put(1, 2, [(1, xy), (1, yx)])
    put(1, 3, [(1, zx), (1, xz)])
    put(2, 2, [(-1, xx), (1, yy), (-1, zz)])
    put(2, 3, [(1, yz), (1, zy)])
    put(3, 3, [(-1, xx), (-1, yy), (1, zz)])
    for a in range(4):
        for b in range(a):
            M[a, b] = M[b, a]
    return M.reshape(16, 9)


def _quaternion_rotation_map() -> np.ndarray:
    """(9, 16) map from vec(q q^T) to vec(R(q)) for a unit quaternion q = (w, x, y, z)."""
    T = np.zeros((3, 3, 4, 4))

    def put(a, b, terms):
        for coef, i, j in terms:
            # split symmetric products evenly so that T acts on the symmetric P = q q^T
            if i == j:
                T[a, b, i, i] += coef
            else:
                T[a, b, i, j] += coef / 2.0
                T[a, b, j, i] += coef / 2.0

    put(0, 0, [(1, 0, 0), (1, 1, 1), (-1, 2, 2), (-1, 3, 3)])
    put(0, 1, [(2, 1, 2), (-2, 0, 3)])
    put(0, 2, [(2, 1, 3), (2, 0, 2)])
    put(1, 0, [(2, 1, 2), (2, 0, 3)])
    put(1, 1, [(1, 0, 0), (-1, 1, 1), (1, 2, 2), (-1, 3, 3)])
    put(1, 2, [(2, 2, 3), (-2, 0, 1)])
    put(2, 0, [(2, 1, 3), (-2, 0, 2)])
    put(2, 1, [(2, 2, 3), (2, 0, 1)])
    put(2, 2, [(1, 0, 0), (-1, 1, 1), (-1, 2, 2), (1, 3, 3)])
    return T.reshape(9, 16)


def _cross_matrix_map() -> np.ndarray:
    """(9, 3) map v -> vec([v]_x), the cross-product matrix ([v]_x u = v x u)."""
    E = np.zeros((3, 3, 3))
    E[0, 1, 2], E[0, 2, 1] = -1.0, 1.0
    E[1, 0, 2], E[1, 2, 0] = 1.0, -1.0
    E[2, 0, 1], E[2, 1, 0] = -1.0, 1.0
    # E[a, b, k]: ([v]_x)[a, b] = sum_k E[a, b, k] v_k
    return E.reshape(9, 3)


def _ancestor_matrix(parents: np.ndarray) -> np.ndarray:
    """A[i, j] = 1 when j != root lies on the tree path root -> i (j == i included)."""
    n = len(parents)
    A = np.zeros((n, n))
    for i in range(n):
        j = i
        seen = 0
        while parents[j] >= 0:
            A[i, j] = 1.0
            j = parents[j]
            seen += 1
            if seen > n:
                raise FeatureError(f"unwrap tree has a cycle through selected atom {i}: parents={parents.tolist()}")
    return A


# ---------------------------------------------------------------------------------
# the module
# ---------------------------------------------------------------------------------
class AlignedPositions(nn.Module):
    """Selected atoms, made whole, centred and optimally rotated onto a reference.

    Parameters
    ----------
    atom_indices : sequence of int
        Indices of the selected atoms in the *full* system (0-based, as in OpenMM and
        mdtraj).  ``forward`` reads only these atoms, so extra particles appended to
        the system (e.g. eABF extended variables) are ignored.
    reference : array (n_sel, 3), nm
        Reference structure of the selected atoms.  It is centred internally.
    parents : sequence of int, optional
        Unwrap tree: ``parents[i]`` is the index *within the selection* of the atom
        that selected atom ``i`` is attached to, ``-1`` for the root (exactly one root).
        Needed for periodic boxes; build it with :func:`spanning_tree_parents`.
        Default: chain order (``[-1, 0, 1, ..., n_sel - 2]``).  Every tree edge must be
        shorter than half the smallest box width.
    method : {"implicit", "power", "eigh", "svd"}
        Optimal-rotation algorithm (see module docstring).  Default ``"implicit"``.
    power_squarings : int
        Number of squarings of the shifted quaternion matrix for ``method="power"``
        (the eigen-gap is amplified as ``ratio ** (2 ** power_squarings)``); default 10.
    mean, std : array (n_sel * 3,), optional
        Feature standardisation ``(f - mean) / std``.  Set later with
        :meth:`set_standardization` or :meth:`fit_standardization`.
    periodic : bool or None
        ``None`` (default): make the molecule whole when the box passed to ``forward``
        is non-zero (checked every call: a host synchronisation on GPUs).  ``True``:
        always run the (branch-free) unwrapping -- no sync, CUDA-graph friendly, still
        correct for an all-zero box.  ``False``: never unwrap.
    rotation_solver : {"eigh", "power"}
        How ``method="implicit"`` finds the rotation (no gradient flows through it):
        ``"eigh"`` (LAPACK, fastest on CPU) or ``"power"`` (matrix products only, no
        host sync; intended for CUDA / CUDA graphs).
    dtype : torch.dtype
        Dtype of the stored constants (positions of another dtype are converted
        in ``forward`` and the result converted back).

    Notes
    -----
    ``forward(positions, box)`` accepts ``positions`` (N, 3) or (B, N, 3) in nm and
    ``box`` (3, 3) or (B, 3, 3) box vectors in nm (rows a, b, c in OpenMM's reduced
    form); an all-zero box means non-periodic.  It returns features (n_sel*3,) or
    (B, n_sel*3) in nm (or standardised units), rotated into the reference frame.
    """

    __constants__ = ["n_atoms", "n_features", "method_code", "n_blocks", "last_power", "block_power", "standardize", "unwrap", "box_mode", "power_solver"]

    def __init__(
        self,
        atom_indices: Sequence[int],
        reference,
        parents: Optional[Sequence[int]] = None,
        method: str = "implicit",
        power_squarings: int = 10,
        mean=None,
        std=None,
        dtype: torch.dtype = torch.float64,
        unwrap: bool = True,
        periodic: Optional[bool] = None,
        rotation_solver: str = "eigh",
    ):
        super().__init__()
        idx = np.asarray(atom_indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise FeatureError("atom_indices is empty: the featurisation needs at least 3 selected atoms")
        if idx.size < 3:
            raise FeatureError(f"atom_indices selects {idx.size} atom(s) ({idx.tolist()}); an alignment needs at least 3")
        if np.any(idx < 0):
            raise FeatureError(f"atom_indices must be non-negative, got {idx[idx < 0].tolist()}")
        if len(np.unique(idx)) != idx.size:
            raise FeatureError(f"atom_indices contains duplicates: {idx.tolist()}")
        ref = validate_reference(reference, idx.size)
        if method not in _METHOD_CODE:
            raise FeatureError(f"unknown alignment method {method!r}; choose one of {ALIGNMENT_METHODS}")
        if power_squarings < 1:
            raise FeatureError(f"power_squarings must be >= 1, got {power_squarings}")
        n = idx.size
        if parents is None:
            par = np.arange(-1, n - 1, dtype=np.int64)
        else:
            par = np.asarray(parents, dtype=np.int64).reshape(-1)
            if par.size != n:
                raise FeatureError(f"parents has {par.size} entries but {n} atoms are selected")
            if np.sum(par < 0) != 1:
                raise FeatureError(f"parents must contain exactly one root (-1), got {par.tolist()}")
            if np.any(par >= n):
                raise FeatureError(f"parents entries must be < {n} (indices within the selection), got {par.tolist()}")
        anc = _ancestor_matrix(par)
        root = int(np.nonzero(par < 0)[0][0])

        self.n_atoms: int = int(n)
        self.n_features: int = int(3 * n)
        self.method: str = method
        self.method_code: int = _METHOD_CODE[method]
        self.power_squarings: int = int(power_squarings)
        # powers done as matrix_power blocks of 2**5 with renormalisation in between
        # (keeps the entries representable in float32)
        self.block_power: int = 32
        self.n_blocks: int = int(power_squarings) // 5
        self.last_power: int = 2 ** (int(power_squarings) % 5)
        self.unwrap: bool = bool(unwrap)
        if periodic not in (None, True, False):
            raise FeatureError(f"periodic must be None (detect from the box), True or False, got {periodic!r}")
        # 0: decide per call from the box (a host sync on GPUs), 1: always make whole
        # (branch-free; an all-zero box is still harmless), 2: never
        self.box_mode: int = 0 if periodic is None else (1 if periodic else 2)
        if rotation_solver not in ("eigh", "power"):
            raise FeatureError(f"rotation_solver must be 'eigh' or 'power', got {rotation_solver!r}")
        # implicit method: rotation from eigh (CPU default) or from power iteration
        # (matrix products only: no LAPACK call, no host sync; for CUDA graphs)
        self.power_solver: bool = rotation_solver == "power"
        self.standardize: bool = False

        self.register_buffer("atom_indices", torch.as_tensor(idx, dtype=torch.long))
        self.register_buffer("parents", torch.as_tensor(np.where(par < 0, root, par), dtype=torch.long))
        self.register_buffer("ancestors", torch.as_tensor(anc, dtype=dtype))
        self.register_buffer("root", torch.tensor([root], dtype=torch.long))
        ref_c = ref - ref.mean(axis=0)
        self.register_buffer("reference", torch.as_tensor(ref_c, dtype=dtype))
        self.register_buffer("horn_map", torch.as_tensor(_horn_matrix_map(), dtype=dtype))
        self.register_buffer("rot_map", torch.as_tensor(_quaternion_rotation_map(), dtype=dtype))
        self.register_buffer("eye4", torch.eye(4, dtype=dtype))
        self.register_buffer("sign_fix", torch.ones(3, dtype=dtype))
        # implicit method: centring operator and cross-product matrices of the reference
        self.register_buffer("centering", torch.as_tensor(np.eye(n) - 1.0 / n, dtype=dtype))
        self.register_buffer("cross_map", torch.as_tensor(_cross_matrix_map(), dtype=dtype))
        ref_cross = (_cross_matrix_map() @ ref_c.T).T.reshape(n, 3, 3)  # [y_i]x
        self.register_buffer("ref_cross", torch.as_tensor(ref_cross.transpose(1, 0, 2).reshape(3, 3 * n), dtype=dtype))
        self.register_buffer("eye3", torch.eye(3, dtype=dtype))
        self.register_buffer("perm1", torch.tensor([1, 2, 0], dtype=torch.long))
        self.register_buffer("perm2", torch.tensor([2, 0, 1], dtype=torch.long))
        # Horn's matrix straight from the (uncentred) selected coordinates: vec(K) = x_flat @ horn_from_x
        # (S = x^T y_c does not need centred x because y_c is centred)
        hx = np.einsum("ia,kb->kiab", np.eye(3), ref_c)  # (n, 3, 3, 3): d S[a, b] / d x[k, i]
        hx = hx.reshape(3 * n, 9) @ _horn_matrix_map().T  # (3n, 16)
        self.register_buffer("horn_from_x", torch.as_tensor(hx, dtype=dtype))
        # transposed copies for the one-frame path (_frame_factors): matrix-vector products without a transpose op
        self.register_buffer("horn_from_x_t", self.horn_from_x.t().contiguous())
        self.register_buffer("cross_map_t", self.cross_map.t().contiguous())
        self.register_buffer("mean", torch.zeros(3 * n, dtype=dtype))
        self.register_buffer("std", torch.ones(3 * n, dtype=dtype))
        if mean is not None or std is not None:
            self.set_standardization(mean, std)

    # -- configuration -------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.reference.dtype

    def set_standardization(self, mean=None, std=None) -> None:
        """Set the feature standardisation ``(f - mean) / std`` (None disables it)."""
        if mean is None and std is None:
            self.mean.zero_()
            self.std.fill_(1.0)
            self.standardize = False
            return
        m = torch.zeros(self.n_features, dtype=torch.float64) if mean is None else torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        s = torch.ones(self.n_features, dtype=torch.float64) if std is None else torch.as_tensor(std, dtype=torch.float64).reshape(-1)
        if m.numel() != self.n_features or s.numel() != self.n_features:
            raise FeatureError(f"standardisation mean/std must have {self.n_features} entries, got {m.numel()} and {s.numel()}")
        if not torch.all(torch.isfinite(m)) or not torch.all(torch.isfinite(s)) or torch.any(s <= 0):
            raise FeatureError("standardisation mean must be finite and std finite and > 0")
        self.mean.copy_(m.to(self.dtype))
        self.std.copy_(s.to(self.dtype))
        self.standardize = True

    @torch.no_grad()
    def fit_standardization(self, features: Tensor, weights: Optional[Tensor] = None, mode: str = "feature", min_std: float = 1e-3) -> None:
        """Fit standardisation on *unstandardised* features (T, n_features).

        Parameters
        ----------
        features : Tensor (T, n_features)
            Output of this module with standardisation off.
        weights : Tensor (T,), optional
            Per-frame statistical weights (uniform when None).
        mode : {"feature", "global"}
            ``"feature"``: per-feature weighted mean and std; ``"global"``: per-feature
            mean and one common std (the RMS over all features), which keeps the
            relative scale of Cartesian coordinates.
        min_std : float
            Lower bound (nm) on std, so near-constant coordinates are not amplified.
        """
        x = torch.as_tensor(features, dtype=torch.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise FeatureError(f"features must have shape (T, {self.n_features}), got {tuple(x.shape)}")
        w = torch.ones(x.shape[0], dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        w = w / w.sum()
        m = (w[:, None] * x).sum(0)
        var = (w[:, None] * (x - m) ** 2).sum(0)
        if mode == "feature":
            s = var.sqrt()
        elif mode == "global":
            s = var.mean().sqrt().expand_as(m).clone()
        else:
            raise FeatureError(f"unknown standardisation mode {mode!r}; use 'feature' or 'global'")
        self.set_standardization(m, s.clamp_min(min_std))

    # -- torch computation ---------------------------------------------------------
    def _make_whole(self, x: Tensor, box: Tensor) -> Tensor:
        """Minimum-image steps along the unwrap tree.  x (B, n, 3), box (B, 3, 3)."""
        d = x - x.index_select(1, self.parents)  # root gets a zero vector
        diag = torch.diagonal(box, dim1=1, dim2=2)  # (B, 3)
        # a zero box entry (non-periodic frame in a mixed batch) must not shift anything
        inv = torch.where(diag != 0, 1.0 / torch.where(diag != 0, diag, torch.ones_like(diag)), torch.zeros_like(diag))
        # reduced triclinic box: remove c, then b, then a
        for k in (2, 1, 0):
            shift = torch.round(d[:, :, k] * inv[:, k : k + 1])  # (B, n)
            d = d - shift.unsqueeze(-1) * box[:, k, :].unsqueeze(1)
        return x.index_select(1, self.root) + torch.matmul(self.ancestors, d)

    def _rotation(self, x: Tensor) -> Tensor:
        """Rotation matrices R (B, 3, 3) with reference ~= x_centred @ R^T."""
        # correlation S[i, j] = sum_k x_ki y_kj (x need not be centred: y is)
        S = torch.matmul(x.transpose(1, 2), self.reference)  # (B, 3, 3)
        B = S.shape[0]
        if self.method_code == 2:
            U, _, Vh = torch.linalg.svd(S)
            d = torch.sign(torch.linalg.det(torch.matmul(U, Vh)))
            D = torch.cat([self.sign_fix[:2].expand(B, 2), d.unsqueeze(1)], dim=1)
            return torch.matmul(Vh.transpose(1, 2) * D.unsqueeze(1), U.transpose(1, 2))
        K = torch.matmul(S.reshape(B, 9), self.horn_map.t()).reshape(B, 4, 4)
        if self.method_code == 1 or (self.method_code == 3 and not self.power_solver):
            _, V = torch.linalg.eigh(K)
            q = V[:, :, 3]
            P = q.unsqueeze(2) * q.unsqueeze(1)
        else:
            # spectrum of K lies in [-nuclear(S), nuclear(S)], nuclear <= sqrt(3) |S|_F:
            # A = (K + sigma I) / (2 sigma) is PSD with eigenvalues in [0, 1] and the top
            # one >= 2/3, so A^32 stays representable even in float32.
            sigma = torch.linalg.matrix_norm(S).reshape(B, 1, 1) * 1.7320508075688772 + 1e-30
            P = K / (2.0 * sigma) + 0.5 * self.eye4
            for _ in range(self.n_blocks):
                P = torch.linalg.matrix_power(P, self.block_power)
                P = P / torch.diagonal(P, dim1=1, dim2=2).sum(1).reshape(B, 1, 1)
            if self.last_power > 1:
                P = torch.linalg.matrix_power(P, self.last_power)
            P = P / torch.diagonal(P, dim1=1, dim2=2).sum(1).reshape(B, 1, 1)
        return torch.matmul(P.reshape(B, 16), self.rot_map.t()).reshape(B, 3, 3)

    def _needs_unwrap(self, box: Tensor) -> bool:
        if not self.unwrap or self.box_mode == 2:
            return False
        if self.box_mode == 1:
            return True
        return bool(torch.any(box != 0))

    def _unwrap_offset(self, x: Tensor, box: Tensor) -> Tensor:
        """Lattice translations (B, n, 3) that make the selection whole (no gradient)."""
        with torch.no_grad():
            off = self._make_whole(x, box) - x
        return off

    def _implicit_features(self, x: Tensor) -> Tensor:
        """Aligned features whose gradient comes from the implicit function theorem.

        The rotation R0 is found without autograd (eigh of Horn's matrix).  Around the
        current configuration the optimal rotation is R(w) R0 with a small rotation
        vector w fixed by the optimality condition sum_i x'_i x y_i = 0 (x' = R0 x_c);
        differentiating it gives dw = J^-1 sum_i [y_i]_x dx'_i with J = S' - tr(S') I,
        S' = sum_i x'_i y_i^T.  The features F_i = x'_i + w x x'_i are therefore, to
        first order, a *linear* map M of the selected coordinates:

            F = (I - P Q) kron(C, R0) x,   P_i = [x'_i]_x,  Q = J^-1 [[y_1]_x ... [y_n]_x]

        with C the centring operator.  M is built without autograd, so the autograd
        graph is one matrix product: values are exact (plus a Newton correction of R0)
        and first derivatives are exact; second derivatives are not provided.
        J is negative semi-definite, singular only for degenerate alignments (e.g.
        collinear atoms); a relative shift of 1e-12 keeps the gradient finite there.
        """
        B = x.shape[0]
        n = self.n_atoms
        if not x.requires_grad:
            xr, _ = self._aligned_value(x)
            return xr.reshape(B, self.n_features)
        M = self._implicit_map_no_grad(x)
        return torch.matmul(M, x.reshape(B, 3 * n, 1)).reshape(B, self.n_features)

    def _aligned_value(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """(aligned coordinates x' (B, n, 3), R0 (B, 3, 3)); call without autograd."""
        B = x.shape[0]
        n = self.n_atoms
        xc = x - x.mean(dim=1, keepdim=True)
        if self.power_solver:
            R0 = self._rotation(xc)
        else:
            K4 = torch.matmul(x.reshape(B, 1, 3 * n), self.horn_from_x).reshape(B, 4, 4)
            _, V = torch.linalg.eigh(K4)
            q = V[:, :, 3]
            R0 = torch.matmul((q.unsqueeze(2) * q.unsqueeze(1)).reshape(B, 1, 16), self.rot_map.t()).reshape(B, 3, 3)
        return torch.matmul(xc, R0.transpose(1, 2)), R0

    def _implicit_map_no_grad(self, x: Tensor) -> Tensor:
        # a no_grad block, not x.detach(): torch.jit.freeze (used by openmm-torch) deletes
        # detach() calls, which would silently turn this part back into an autograd graph
        with torch.no_grad():
            M = self._implicit_map(x)
        return M

    def _implicit_map(self, x: Tensor) -> Tensor:
        """The linear map M (B, 3n, 3n) with features = M x_flat (see _implicit_features)."""
        B = x.shape[0]
        n = self.n_atoms
        R0, P, Q = self._implicit_factors(x)
        K = (self.centering.reshape(1, n, 1, n, 1) * R0.reshape(B, 1, 3, 1, 3)).reshape(B, 3 * n, 3 * n)
        return K - torch.matmul(P, torch.matmul(Q, K))

    def _implicit_factors(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """The factors of M = K - P Q K (K = C kron R0): R0 (B, 3, 3), P (B, 3n, 3) and Q (B, 3, 3n).

        Q's atom blocks sum to zero (the reference is centred), so Q K is Q with each block rotated by R0: a
        caller that needs only W M for a fixed W can skip forming K and M. One frame: :meth:`_frame_factors`.
        """
        B = x.shape[0]
        n = self.n_atoms
        aligned = self._aligned_value(x)
        xr = aligned[0]
        R0 = aligned[1]
        S = torch.matmul(xr.transpose(1, 2), self.reference)  # (B, 3, 3)
        tr = torch.diagonal(S, dim1=1, dim2=2).sum(1).reshape(B, 1, 1)
        J = S - (tr * (1.0 + 1e-12) + 1e-30) * self.eye3
        # J^-1 = adj(J) / det(J) with adj(J)^T rows = cross products of J's rows: a few
        # elementwise ops instead of a LAPACK LU solve (J is negative definite here)
        c = torch.linalg.cross(J.index_select(1, self.perm1), J.index_select(1, self.perm2), dim=2)
        det = (J[:, 0] * c[:, 0]).sum(1).reshape(B, 1, 1)
        Q = torch.matmul(c.transpose(1, 2), self.ref_cross) / det  # (B, 3, 3n)
        P = torch.matmul(xr, self.cross_map.t()).reshape(B, 3 * n, 3)  # [x'_i]_x stacked
        return R0, P, Q

    def _frame_factors(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """:meth:`_implicit_factors` of one frame x (n, 3): R0 (3, 3), P (3n, 3), Q (3, 3n); call without autograd.

        The same algebra in 2D products: about a third fewer ops than the batched form with B = 1, which is what
        the exported CV's per-step Jacobian (``ExportedCV.value_and_jacobian``) pays for.
        """
        xc = x - x.mean(dim=0, keepdim=True)
        if self.power_solver:
            R0 = self._rotation(xc.unsqueeze(0))[0]
        else:
            _, V = torch.linalg.eigh(torch.mv(self.horn_from_x_t, x.reshape(-1)).view(4, 4))
            q = V.select(1, 3)
            R0 = torch.mv(self.rot_map, torch.outer(q, q).view(16)).view(3, 3)
        xr = torch.mm(xc, R0.t())  # aligned coordinates x'
        S = torch.mm(xr.t(), self.reference)
        J = S - (torch.trace(S) * (1.0 + 1e-12) + 1e-30) * self.eye3
        c = torch.linalg.cross(J.index_select(0, self.perm1), J.index_select(0, self.perm2), dim=1)  # adj(J)^T
        Q = torch.mm(c.t(), self.ref_cross) / torch.dot(J[0], c[0])
        P = torch.mm(xr, self.cross_map_t).view(-1, 3)
        return R0, P, Q

    def featurize_selected(self, x: Tensor, box: Tensor) -> Tensor:
        """Features from coordinates of the selected atoms only.

        x : (B, n_sel, 3) nm in the module dtype; box : (B, 3, 3) or (1, 3, 3) nm.
        Returns (B, n_features).
        """
        if self._needs_unwrap(box):
            box = box.expand(x.shape[0], 3, 3)
            if self.method_code == 3:
                # lattice shifts are piecewise constant: add them without a graph
                x = x + self._unwrap_offset(x, box)
            else:
                x = self._make_whole(x, box)
        if self.method_code == 3:
            f = self._implicit_features(x)
        else:
            xc = x - x.mean(dim=1, keepdim=True)
            R = self._rotation(xc)
            f = torch.matmul(xc, R.transpose(1, 2)).reshape(x.shape[0], self.n_features)
        if self.standardize:
            f = (f - self.mean) / self.std
        return f

    def forward(self, positions: Tensor, box: Tensor) -> Tensor:
        x = positions.to(self.reference.dtype)
        b = box.to(self.reference.dtype)
        if b.dim() == 2:
            b = b.unsqueeze(0)
        if positions.dim() == 2 and self.method_code == 3:
            f = self._unbatched_implicit(x.index_select(0, self.atom_indices), b)
        elif positions.dim() == 2:
            f = self.featurize_selected(x.index_select(0, self.atom_indices).unsqueeze(0), b).squeeze(0)
        else:
            f = self.featurize_selected(x.index_select(1, self.atom_indices), b)
        return f.to(positions.dtype)

    def _unbatched_implicit(self, x: Tensor, box: Tensor) -> Tensor:
        """The MD hot path: one frame (n_sel, 3), implicit method, fewest autograd nodes.

        Identical to ``featurize_selected(x[None], box)[0]``; the batch dimension needed
        by the helpers only appears inside no_grad blocks, so the autograd graph is
        index_select -> (shift) -> reshape -> mv.
        """
        if self._needs_unwrap(box):
            x = x + self._unwrap_offset(x.unsqueeze(0), box)[0]
        if x.requires_grad:
            M = self._implicit_map_no_grad(x.unsqueeze(0))[0]
            f = torch.mv(M, x.reshape(self.n_features))
        else:
            f = self._implicit_features(x.unsqueeze(0))[0]
        if self.standardize:
            f = (f - self.mean) / self.std
        return f

# ---------------------------------------------------------------------------------
# helpers: selection, trees, validation
# ---------------------------------------------------------------------------------
def select_atoms(topology, selection: str, what: str = "selection") -> np.ndarray:
    """Atom indices matching an mdtraj DSL ``selection`` (mdtraj or OpenMM topology).

    Delegates to :func:`aesample.selection.select_atoms`, which raises
    :class:`~aesample.selection.SelectionError` showing the string when it is invalid or empty.
    """
    if not hasattr(topology, "select"):  # an openmm.app.Topology
        import mdtraj as md

        topology = md.Topology.from_openmm(topology)
    return _select_atoms(topology, selection, what=what)


def spanning_tree_parents(topology, atom_indices: Sequence[int], max_bonds: int = 6) -> np.ndarray:
    """Unwrap tree over the selected atoms.

    Selected atom ``k`` (in selection order) is attached to the earlier selected atom
    closest to it through the bond graph, walking at most ``max_bonds`` bonds (the walk
    may pass through non-selected atoms, e.g. CA-C-N-CA).  When none is that close
    (separate molecule, or no bonds in the topology) it is chained to atom ``k - 1``.
    Returns ``parents`` (indices within the selection, -1 for the root = first selected
    atom), suitable for :class:`AlignedPositions`.

    Every edge's length must stay below half the box width; bonded neighbours and
    consecutive alpha carbons (~0.38 nm) satisfy that in practice.
    """
    import mdtraj as md

    if not hasattr(topology, "select"):
        topology = md.Topology.from_openmm(topology)
    idx = [int(i) for i in atom_indices]
    pos = {a: k for k, a in enumerate(idx)}
    adj = [[] for _ in range(topology.n_atoms)]
    for bond in topology.bonds:
        a, b = bond[0].index, bond[1].index
        adj[a].append(b)
        adj[b].append(a)
    parents = np.full(len(idx), -1, dtype=np.int64)
    for k in range(1, len(idx)):
        parents[k] = k - 1
        seen = {idx[k]}
        front = [idx[k]]
        found = False
        for _ in range(max_bonds):
            nxt = []
            for a in front:
                for b in adj[a]:
                    if b in seen:
                        continue
                    seen.add(b)
                    if b in pos and pos[b] < k:
                        parents[k] = pos[b]
                        found = True
                        break
                    nxt.append(b)
                if found:
                    break
            if found or not nxt:
                break
            front = nxt
    return parents


def validate_reference(reference, n_selected: int, name: str = "reference") -> np.ndarray:
    """Check that a reference structure is finite with shape (n_selected, 3)."""
    ref = np.asarray(reference, dtype=np.float64)
    if ref.ndim == 3 and ref.shape[0] == 1:
        ref = ref[0]
    if ref.ndim != 2 or ref.shape[1] != 3:
        raise FeatureError(f"{name} must have shape (n_atoms, 3), got {ref.shape}")
    if ref.shape[0] != n_selected:
        raise FeatureError(
            f"{name} has {ref.shape[0]} atoms but the selection has {n_selected} atoms; "
            "give the reference coordinates of the selected atoms only, in selection order"
        )
    if not np.all(np.isfinite(ref)):
        raise FeatureError(f"{name} contains NaN or infinite coordinates")
    return ref


def check_frames_finite(frames, source: str = "frames", offset: int = 0) -> None:
    """Raise :class:`FeatureError` naming the first frame with NaN/inf coordinates."""
    arr = frames.detach().cpu().numpy() if isinstance(frames, Tensor) else np.asarray(frames)
    if arr.ndim == 2:
        arr = arr[None]
    bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
    if np.any(bad):
        first = int(np.nonzero(bad)[0][0])
        raise FeatureError(
            f"{source}: frame {first + offset} contains NaN or infinite coordinates "
            f"({int(bad.sum())} bad frame(s) in this block of {arr.shape[0]})"
        )
