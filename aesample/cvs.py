"""Standard collective variables following the aesample CV TorchScript contract.

Every CV here is a ``torch.nn.Module`` (script it with :func:`torch.jit.script`) with

    forward(positions: Tensor, box: Tensor) -> Tensor

``positions`` is ``(N, 3)`` or ``(B, N, 3)`` in nm, ``box`` is ``(3, 3)`` or ``(B, 3, 3)`` (rows a, b, c; all
zero = not periodic). The result is ``(d,)`` or ``(B, d)``. Each module exposes ``cv_dim``, ``atom_indices``
and ``periodic`` (one bool per component). The forward passes are a handful of vectorised torch ops (no
Python loops at runtime), so they are cheap inside an OpenMM ``TorchForce``.

Optional extension of the contract (used by the eABF force when present): a ``@torch.jit.export`` method

    value_and_jacobian(positions: (N, 3), box: (3, 3)) -> (xi (d,), J (d, n_sel, 3))

with ``J[k, i, a] = d xi_k / d positions[atom_indices[i], a]`` (every other particle has zero derivative), in
closed form without autograd. It is the same interface as the exported autoencoder CV
(``aesample.export.ExportedCV.value_and_jacobian``). Force modules then need one small matrix product instead of
an autograd backward pass (the backward of a dihedral is ~50 interpreted ops). All CVs here provide it.

Provided: :class:`Dihedral` (rad, periodic), :class:`Distance` (nm), :class:`PositionX` (x coordinate of one
particle, for analytic tests), :class:`PositionXY`, and :class:`Stack` (concatenate up to 3 one-dimensional CVs
into a single module). :func:`peptide_dihedral` resolves backbone dihedral names through mdtraj and
:func:`parse_cv_spec` turns command-line specs such as ``"phi,psi"``, ``"dihedral:4,6,8,14"`` or
``"distance:0,10"`` into a module.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch

__all__ = [
    "Dihedral",
    "Dihedrals",
    "Distance",
    "PositionX",
    "PositionXY",
    "Stack",
    "minimum_image",
    "peptide_dihedral",
    "parse_cv_spec",
    "script_cv",
    "check_cv",
]


def minimum_image(vec: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Minimum-image displacement vectors for an OpenMM box (rows a, b, c), via fractional coordinates.

    ``vec`` is ``(..., k, 3)`` and ``box`` broadcastable ``(..., 3, 3)``. ``vec - round(vec B^-1) B``: exact
    minimum image for vectors shorter than half the smallest box width (bond vectors, the use here). When the box
    is all zero the vectors are returned unchanged: an early return when the box lives on the host (free to
    inspect), branch-free arithmetic on GPUs (no host synchronisation, CUDA-graph friendly).
    """
    if box.device.type == "cpu":
        # inspecting a host tensor costs no device synchronisation: skip all work for "not periodic"
        if not bool(box.any()):
            return vec
    box = box.to(vec.dtype)
    periodic = (box.abs().sum() > 0).to(vec.dtype)
    # Guard the inverse for the all-zero (non-periodic) box.
    safe = box + (1.0 - periodic) * torch.eye(3, dtype=box.dtype, device=box.device)
    n = torch.round(torch.matmul(vec, torch.linalg.inv(safe)))
    return vec - periodic * torch.matmul(n, safe)


class Dihedrals(torch.nn.Module):
    """k dihedral angles (rad, in [-pi, pi), OpenMM/IUPAC sign) evaluated together: one set of ops for all k.

    ``quads``: sequence of k lists of 4 atom indices. Returns (k,) / (B, k).
    """

    def __init__(self, quads: Sequence[Sequence[int]]):
        super().__init__()
        quads = [[int(a) for a in q] for q in quads]
        if not quads or len(quads) > 3:
            raise ValueError(f"Dihedrals needs 1 to 3 dihedrals, got {len(quads)}")
        for q in quads:
            if len(q) != 4 or len(set(q)) != 4 or min(q) < 0:
                raise ValueError(f"Dihedral needs 4 distinct non-negative atom indices, got atoms={q}")
        self.register_buffer("quads", torch.tensor(quads, dtype=torch.long).reshape(-1))
        self.register_buffer("atom_indices", torch.unique(torch.tensor(quads, dtype=torch.long)))
        self.k: int = len(quads)
        self.cv_dim: int = len(quads)
        self.periodic: List[bool] = [True] * len(quads)
        # Jacobian scatter: quad atom (j, a) -> flat row j * n_sel + (position of its atom in atom_indices)
        uniq = self.atom_indices.tolist()
        pos_in = {a: i for i, a in enumerate(uniq)}
        self.n_sel: int = len(uniq)
        scatter = torch.zeros(len(quads) * len(uniq), 4 * len(quads), dtype=torch.float64)
        for j, q in enumerate(quads):
            for a_i, a in enumerate(q):
                scatter[j * len(uniq) + pos_in[a], 4 * j + a_i] = 1.0
        self.register_buffer("jac_scatter", scatter)
        # gradient rows g = C (a0, a3) per dihedral, C (4, 2) flattened = c_base + (s1, 1, s3) @ c_lin:
        # p0: (1, 0), p1: (-1 - s1, s3), p2: (s1, -1 - s3), p3: (0, 1)  (see value_and_jacobian)
        self.register_buffer("c_base", torch.tensor([[1.0, 0.0, -1.0, 0.0, 0.0, -1.0, 0.0, 1.0]],
                                                    dtype=torch.float64))
        self.register_buffer("c_lin", torch.tensor([[0.0, 0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0],
                                                    [0.0] * 8,
                                                    [0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0]], dtype=torch.float64))

    def forward(self, positions: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        p = positions.index_select(-2, self.quads)  # (..., 4k, 3)
        p = p.reshape(p.shape[:-2] + (self.k, 4, 3))
        b = p[..., 1:, :] - p[..., :-1, :]  # (..., k, 3, 3) bond vectors b1, b2, b3
        b = minimum_image(b, box.to(p.dtype).unsqueeze(-3))
        b1 = b[..., 0, :]
        b2 = b[..., 1, :]
        b3 = b[..., 2, :]
        n1 = torch.cross(b1, b2, dim=-1)
        n2 = torch.cross(b2, b3, dim=-1)
        x = (n1 * n2).sum(-1)
        # m1 . n2 with m1 = n1 x b2/|b2|, written as |b2| (b1 . n2) (one cross product fewer)
        y = torch.linalg.vector_norm(b2, dim=-1) * (b1 * n2).sum(-1)
        return torch.atan2(y, x)

    @torch.jit.export
    def value_and_jacobian(self, positions: torch.Tensor, box: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """phi (k,) and d phi / d positions[atom_indices] (k, n_sel, 3) in closed form, one frame (no autograd).

        With b1, b2, b3 the bond vectors and n1 = b1 x b2, n2 = b2 x b3 (Blondel & Karplus, J. Comput. Chem. 17,
        1132 (1996)): d phi/d p0 = -|b2| n1/|n1|^2 = a0, d phi/d p3 = |b2| n2/|n2|^2 = a3,
        d phi/d p1 = -(1 + s1) a0 + s3 a3, d phi/d p2 = s1 a0 - (1 + s3) a3, s1 = b1.b2/|b2|^2, s3 = b3.b2/|b2|^2.
        Written for few interpreted ops (~40 for any k): the four atom gradients are one batched (4, 2) x (2, 3)
        product whose coefficient matrix is one addmm of (s1, 1, s3).
        """
        p = positions.index_select(0, self.quads).view(self.k, 4, 3)
        b = minimum_image(p.narrow(1, 1, 3) - p.narrow(1, 0, 3), box)  # (k, 3, 3): b1, b2, b3
        n = torch.cross(b.narrow(1, 0, 2), b.narrow(1, 1, 2), dim=-1)  # (k, 2, 3): n1, n2
        bb = b.unbind(1)
        nn = n.unbind(1)
        dots = (b * bb[1].unsqueeze(1)).sum(-1)  # (k, 3): b1.b2, |b2|^2, b3.b2
        nb2 = torch.sqrt(dots.select(1, 1))
        phi = torch.atan2(nb2 * (bb[0] * nn[1]).sum(-1), (nn[0] * nn[1]).sum(-1))
        a = n * (torch.stack([-nb2, nb2], -1) / (n * n).sum(-1)).unsqueeze(-1)  # (k, 2, 3): a0, a3
        c_base = self.c_base
        c_lin = self.c_lin
        if c_base.dtype != p.dtype:
            c_base = c_base.to(p.dtype)
            c_lin = c_lin.to(p.dtype)
        c = torch.addmm(c_base, dots / dots.narrow(1, 1, 1), c_lin).view(self.k, 4, 2)  # from (s1, 1, s3)
        g = torch.bmm(c, a)  # (k, 4, 3): d phi_j / d p_a for the 4 atoms of quad j
        scatter = self.jac_scatter if self.jac_scatter.dtype == p.dtype else self.jac_scatter.to(p.dtype)
        # 0/1 matrix: every output row receives exactly one gradient row (exact)
        return phi, torch.mm(scatter, g.view(4 * self.k, 3)).view(self.k, self.n_sel, 3)


class Dihedral(Dihedrals):
    """Dihedral angle (rad, in [-pi, pi)) defined by four atom indices (OpenMM/IUPAC sign convention)."""

    def __init__(self, atoms: Sequence[int]):
        super().__init__([list(atoms)])


class Distance(torch.nn.Module):
    """Distance (nm) between two atoms, minimum image when the box is periodic."""

    def __init__(self, atoms: Sequence[int]):
        super().__init__()
        atoms = [int(a) for a in atoms]
        if len(atoms) != 2 or atoms[0] == atoms[1] or min(atoms) < 0:
            raise ValueError(f"Distance needs 2 distinct non-negative atom indices, got atoms={atoms}")
        self.register_buffer("atom_indices", torch.tensor(atoms, dtype=torch.long))
        self.cv_dim: int = 1
        self.periodic: List[bool] = [False]

    def forward(self, positions: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        p = positions.index_select(-2, self.atom_indices)
        v = minimum_image(p[..., 1:2, :] - p[..., 0:1, :], box.to(p.dtype))
        return torch.linalg.vector_norm(v[..., 0, :], dim=-1).unsqueeze(-1)

    @torch.jit.export
    def value_and_jacobian(self, positions: torch.Tensor, box: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """r (1,) and d r / d positions[atom_indices] (1, 2, 3): (-u, u) with u the unit vector 0 -> 1."""
        p = positions.index_select(0, self.atom_indices)
        v = minimum_image(p[1:2] - p[0:1], box.to(p.dtype))  # (1, 3)
        r = torch.linalg.vector_norm(v, dim=-1)  # (1,)
        u = v / r
        return r, torch.cat([-u, u]).unsqueeze(0)


class _ParticleCoordinates(torch.nn.Module):
    """The first ``n`` Cartesian coordinates (nm) of one particle (not periodic-aware): CVs for analytic tests."""

    def __init__(self, atom: int, n: int):
        super().__init__()
        if int(atom) < 0:
            raise ValueError(f"{type(self).__name__} needs a non-negative particle index, got atom={atom}")
        self.register_buffer("atom_indices", torch.tensor([int(atom)], dtype=torch.long))
        # d(x_k)/d(position) is row k of the identity: a constant (n, 1, 3) Jacobian
        self.register_buffer("jac", torch.eye(3, dtype=torch.float64)[:n].unsqueeze(1).clone())
        self.n: int = int(n)
        self.cv_dim: int = int(n)
        self.periodic: List[bool] = [False] * int(n)

    def forward(self, positions: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        return positions.index_select(-2, self.atom_indices)[..., 0, 0:self.n]

    @torch.jit.export
    def value_and_jacobian(self, positions: torch.Tensor, box: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The coordinates (n,) and their constant Jacobian (n, 1, 3)."""
        return positions.index_select(0, self.atom_indices)[0, 0:self.n], self.jac.to(positions.dtype)


class PositionX(_ParticleCoordinates):
    """x coordinate (nm) of one particle. Meant for analytic test potentials (not periodic-aware)."""

    def __init__(self, atom: int):
        super().__init__(atom, 1)


class PositionXY(_ParticleCoordinates):
    """(x, y) coordinates (nm) of one particle: a 2D CV for analytic tests."""

    def __init__(self, atom: int):
        super().__init__(atom, 2)


class Stack(torch.nn.Module):
    """Concatenate up to three CVs (each of dimension 1, or one CV of dimension <= 3) into one module.

    The components are evaluated in order and concatenated along the last axis; ``periodic`` and
    ``atom_indices`` are merged.
    """

    def __init__(self, cvs: Sequence[torch.nn.Module]):
        super().__init__()
        cvs = list(cvs)
        if not cvs:
            raise ValueError("Stack needs at least one CV, got an empty list")
        dims = [int(getattr(c, "cv_dim", 1)) for c in cvs]
        if sum(dims) > 3:
            raise ValueError(f"Stack supports at most 3 dimensions in total, got component dims {dims}")
        self.cvs = torch.nn.ModuleList(cvs)
        self.cv_dim: int = int(sum(dims))
        per: List[bool] = []
        for c, dd in zip(cvs, dims):
            p = list(getattr(c, "periodic", [False] * dd))
            per.extend(bool(v) for v in p)
        self.periodic: List[bool] = per
        idx = torch.cat([c.atom_indices.reshape(-1) for c in cvs]) if all(
            hasattr(c, "atom_indices") for c in cvs
        ) else torch.zeros(0, dtype=torch.long)
        self.register_buffer("atom_indices", torch.unique(idx))
        if all(hasattr(c, "value_and_jacobian") and hasattr(c, "atom_indices") for c in cvs):
            # rows of the stacked Jacobian (d * n_sel, 3) that each component's (d_c * n_c, 3) rows land on
            uniq = {a: i for i, a in enumerate(self.atom_indices.tolist())}
            n_u = len(uniq)
            rows: List[int] = []
            off = 0
            for c, dd in zip(cvs, dims):
                atoms = c.atom_indices.reshape(-1).tolist()
                rows.extend((off + k) * n_u + uniq[a] for k in range(dd) for a in atoms)
                off += dd
            self.register_buffer("jac_rows", torch.tensor(rows, dtype=torch.long))
            self.n_sel: int = n_u
            self.__class__ = _JacobianStack  # same module plus the exported closed-form Jacobian

    def forward(self, positions: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        outs: List[torch.Tensor] = []
        for c in self.cvs:
            outs.append(c(positions, box))
        return torch.cat(outs, dim=-1)


class _JacobianStack(Stack):
    """A :class:`Stack` whose components all provide ``value_and_jacobian`` (built by ``Stack.__init__``)."""

    @torch.jit.export
    def value_and_jacobian(self, positions: torch.Tensor, box: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Stacked values (d,) and Jacobian (d, n_sel, 3) over the merged ``atom_indices``."""
        vals: List[torch.Tensor] = []
        jacs: List[torch.Tensor] = []
        for c in self.cvs:
            v, j = c.value_and_jacobian(positions, box)
            vals.append(v)
            jacs.append(j.reshape(-1, 3))
        xi = torch.cat(vals)
        jac = torch.zeros(self.cv_dim * self.n_sel, 3, dtype=xi.dtype, device=xi.device).index_add_(
            0, self.jac_rows, torch.cat(jacs))
        return xi, jac.reshape(self.cv_dim, self.n_sel, 3)


def script_cv(module: torch.nn.Module) -> torch.jit.ScriptModule:
    """Script a CV module (no-op if it is already a ScriptModule)."""
    if isinstance(module, torch.jit.ScriptModule):
        return module
    return torch.jit.script(module)


def check_cv(cv: torch.nn.Module, positions, box=None, name: str = "cv") -> torch.Tensor:
    """Evaluate ``cv`` on one configuration and check the contract; returns xi as a float64 tensor (d,).

    Raises ValueError naming ``name`` when the output is not a finite 1-D tensor of length 1..3 or does not
    match the module's ``cv_dim``.
    """
    pos = torch.as_tensor(positions, dtype=torch.float64)
    b = torch.zeros(3, 3, dtype=torch.float64) if box is None else torch.as_tensor(box, dtype=torch.float64)
    try:
        with torch.no_grad():
            xi = cv(pos, b)
    except Exception as exc:  # report the CV as the culprit, with the original message
        raise ValueError(f"{name}: evaluating the CV on the system positions failed: {exc}") from exc
    if not isinstance(xi, torch.Tensor) or xi.dim() != 1 or not (1 <= xi.shape[0] <= 3):
        shape = tuple(xi.shape) if isinstance(xi, torch.Tensor) else type(xi).__name__
        raise ValueError(
            f"{name}: a CV must return shape (d,) with d in 1..3 for positions (N, 3); got shape {shape}"
        )
    dim = getattr(cv, "cv_dim", None)
    if dim is not None and int(dim) != xi.shape[0]:
        raise ValueError(f"{name}: cv_dim={dim} but the CV returned {xi.shape[0]} components")
    if not torch.isfinite(xi).all():
        raise ValueError(f"{name}: the CV returned non-finite values {xi.tolist()} on the system positions")
    return xi.to(torch.float64)


def peptide_dihedral(topology, name: str, residue: Optional[int] = None) -> Dihedral:
    """Backbone dihedral ``name`` ("phi" or "psi") of a peptide as a :class:`Dihedral`.

    Parameters
    ----------
    topology : mdtraj.Topology or openmm.app.Topology
    name : {"phi", "psi"}
    residue : int, optional
        Index (0-based, in mdtraj's list of defined dihedrals of that kind) of the dihedral; required when the
        peptide has more than one, defaults to the only one otherwise.
    """
    import mdtraj
    import numpy as np

    if not isinstance(topology, mdtraj.Topology):
        topology = mdtraj.Topology.from_openmm(topology)
    key = name.strip().lower()
    if key not in ("phi", "psi"):
        raise ValueError(f"peptide_dihedral: name must be 'phi' or 'psi', got {name!r}")
    traj = mdtraj.Trajectory(np.zeros((1, topology.n_atoms, 3), dtype=np.float32), topology)
    fn = mdtraj.compute_phi if key == "phi" else mdtraj.compute_psi
    idx, _ = fn(traj)
    if len(idx) == 0:
        raise ValueError(f"peptide_dihedral: the topology has no {key} dihedral")
    if residue is None:
        if len(idx) > 1:
            raise ValueError(
                f"peptide_dihedral: the topology has {len(idx)} {key} dihedrals; pass residue=0..{len(idx) - 1}"
            )
        residue = 0
    if not 0 <= residue < len(idx):
        raise ValueError(f"peptide_dihedral: residue={residue} out of range 0..{len(idx) - 1} for {key}")
    return Dihedral([int(a) for a in idx[residue]])


def parse_cv_spec(spec: str, topology=None) -> torch.nn.Module:
    """Build a CV module from a command-line spec.

    Components are separated by ``;`` or, for named dihedrals, by ``,``::

        "phi"  "phi,psi"  "phi2" (second phi)  "dihedral:4,6,8,14"  "distance:0,10"  "x:0"
        "dihedral:4,6,8,14;dihedral:6,8,14,16"  "phi;distance:0,10"

    Returns a single 1-D module or a :class:`Stack` (unscripted; call :func:`script_cv`).
    """
    spec = spec.strip()
    if not spec:
        raise ValueError("--cv: empty CV specification")
    parts: List[str] = []
    for chunk in spec.split(";"):
        chunk = chunk.strip()
        if ":" in chunk:
            parts.append(chunk)
        else:
            parts.extend(p.strip() for p in chunk.split(",") if p.strip())
    mods: List[torch.nn.Module] = []
    for p in parts:
        if ":" in p:
            kind, args = p.split(":", 1)
            kind = kind.strip().lower()
            try:
                ints = [int(a) for a in args.replace(" ", "").split(",") if a]
            except ValueError:
                raise ValueError(f"--cv: could not parse atom indices in {p!r}") from None
            if kind in ("dihedral", "torsion"):
                mods.append(Dihedral(ints))
            elif kind in ("distance", "dist"):
                mods.append(Distance(ints))
            elif kind in ("x", "positionx"):
                if len(ints) != 1:
                    raise ValueError(f"--cv: {p!r} needs exactly one particle index")
                mods.append(PositionX(ints[0]))
            else:
                raise ValueError(f"--cv: unknown CV kind {kind!r} in {p!r} (dihedral, distance, x)")
        else:
            low = p.lower()
            base = low.rstrip("0123456789")
            if base not in ("phi", "psi"):
                raise ValueError(f"--cv: unknown CV name {p!r} (phi, psi, dihedral:i,j,k,l, distance:i,j)")
            if topology is None:
                raise ValueError(f"--cv: {p!r} needs a topology to resolve atom names")
            res = None if base == low else int(low[len(base):]) - 1
            mods.append(peptide_dihedral(topology, base, res))
    if len(mods) > 3:
        raise ValueError(f"--cv: at most 3 components are supported, got {len(mods)} in {spec!r}")
    if len(mods) > 1 and all(isinstance(m, Dihedrals) for m in mods):
        # one batched module: the cost of one dihedral for all of them
        return Dihedrals([q for m in mods for q in m.quads.reshape(-1, 4).tolist()])
    return mods[0] if len(mods) == 1 else Stack(mods)


# Convenience constant for periodic dihedral grids.
TWO_PI = 2.0 * math.pi
