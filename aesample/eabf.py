"""Extended-system adaptive biasing force (eABF) inside OpenMM, with a TorchScript CV.

:class:`ExtendedABF` takes an OpenMM ``System`` and a CV module (the aesample CV contract, see ``cvs.py``) and

* appends ``d`` extended particles to the System. ``lambda_i`` is the x coordinate of particle ``N + i`` (in CV
  units). Their y and z are held by a stiff-enough harmonic pin (spring constant ``kappa_i`` about y = z = 0,
  same period as the lambda oscillator) so they stay put at negligible cost. They get zero-interaction entries
  in every NonbondedForce (plus mutual exceptions), CustomNonbondedForce (plus exclusions) and GBn2
  CustomGBForce (no charge, no descreening, no neck term, constant Born radius: molecular forces are unchanged,
  the energy shifts by a constant); GBSAOBCForce, other CustomGBForces and AMOEBA forces are refused;
* adds ONE openmm-torch ``TorchForce`` (its own force group) whose scripted module, per force evaluation,
  evaluates the CV once for all ``d`` components, returns the coupling energy
  ``sum_i kappa_i/2 (xi_i - lambda_i)^2`` (difference wrapped to [-pi, pi) for periodic components) and explicit
  forces: on atoms ``-sum_i kappa_i (xi_i - lambda_i) dxi_i/dq``, on ``lambda_i`` the coupling force
  ``kappa_i (xi_i - lambda_i)`` plus the ABF bias and the walls. ``dxi/dq`` comes from the CV's closed-form
  ``value_and_jacobian`` when it has one (all CVs of ``cvs.py`` and the exported autoencoder CV with the implicit
  alignment; checked against autograd at construction, see ``cvJacobian``): then the whole force is autograd-free
  and the atom forces are one (1, d) x (d, 3 n_sel) product. Otherwise ONE autograd vector-Jacobian product.

ABF bias on lambda
    Per lambda bin the module accumulates ``n`` and ``sum kappa (lambda - xi)``; ``<kappa (lambda - xi)>`` estimates
    ``dA_kappa/dlambda``, and ``+ramp(n) * <kappa (lambda - xi)>`` is added to the force on lambda (it cancels the
    mean force ``-dA_kappa/dlambda``). ``ramp(n) = clip((n - minSamples) / (fullSamples - minSamples), 0, 1)``: the
    linear ramp of Colvars (``fullSamples``, ``minSamples`` defaults to ``fullSamples/2``) and PLUMED DRR.
    With ``biasOnlyWhereReached`` (default) the bias of a lambda bin applies only once xi itself has been sampled
    in it, so lambda cannot run off beyond the range of a bounded CV.
    Non-periodic components get harmonic walls ``wallKappa/2 (lambda - gridMax)^2`` above the grid and likewise
    below it; periodic components (``gridMax - gridMin`` must be the period 2*pi) wrap.
    CZAR accumulators: per xi bin ``n(z)`` and ``sum kappa (lambda - xi)``, the inputs of
    ``dA/dz = -kT d ln n(z)/dz + <kappa (lambda - z)>_z`` (Lesage et al., J. Phys. Chem. B 2017).

Device-resident accumulators
    All accumulators live in ONE float64 module buffer ``acc`` of shape (2 * nbins, 1 + d): rows of the lambda
    bins hold ``[n, sum kappa (lambda - xi)]``, rows of the xi bins ``[n(z), sum kappa (lambda - xi)]``. A step
    updates both rows with one ``index_add_`` of ``outer(weights, [1, f])`` (the weights fold the sampling gate,
    the "already sampled" check and the in-grid flags into 0/1 values: no Python branch on device values, no host
    transfer). Cost per call is dominated by the number of interpreted aten ops (~1-3 us each on a CPU), so the
    module uses constant tensors built once and as few ops as possible (counts in ``benchmarks/EABF_RESULTS.md``). A Context global parameter ``<prefix>sample`` (default 1) gates
    sampling (set it to 0 during minimisation/equilibration). A sample is skipped when ``(xi, lambda)`` equals the
    last sampled pair, so the extra force evaluations of ``getState(getForces/getEnergy)`` or reporters at an
    already-sampled configuration never add samples (they are taken once, whoever evaluates first; the same
    sample set as without the extra evaluations).

Read-out (device -> host)
    Setting ``<prefix>readout`` = 1 switches the module into read-out mode: it adds no sample and returns zero
    energy and forces that carry chunk ``<prefix>chunk`` of the flattened vector ``[xi, lambda, applied bias,
    count, grad, zcount, czar, last, n_samples]`` (the first three are recomputed in read-out mode from the
    positions and the accumulators with the same ops as the force path, so the common path stores nothing for
    them). Each float64 is
    split by frexp into a 53-bit integer mantissa, sign and exponent, packed into three integers < 2^22, stored
    as the x, y, z force of one particle (see :func:`decode_readout`). Integers below 2^24 survive float32 force buffers (CPU) and CUDA/OpenCL
    64-bit fixed point exactly, so the host reassembles bit-exact float64 values. Virtual sites are skipped (their
    forces are redistributed). Read with ``context.getState(getForces=True, groups={forceGroup})``; the force
    group must hold no other force (checked). Read-out is done between steps only and restores the parameters.

Restore
    :meth:`ExtendedABF.getState` returns an :class:`EABFState` (numpy arrays + grid metadata, ``save``/``load`` as
    an atomic ``.npz``). Passing it as ``initialState=`` bakes the buffers into the scripted module before the
    Context exists; together with an OpenMM checkpoint of the same System this continues a run exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import cvs as _cvs
from .config import EABFConfig
from .torchbinding import make_torch_force

__all__ = ["ExtendedABF", "EABFState", "EABFError", "coupled_czar_bins", "decode_readout", "encode_readout_numpy"]

TWO_PI = 2.0 * math.pi
_DEFAULTS = EABFConfig()  # the configuration owns the defaults shared with ExtendedABF's constructor
_MASK21 = (1 << 21) - 1
_MASK22 = (1 << 22) - 1
_NO_SAMPLE = 1.0e300


class EABFError(ValueError):
    """Invalid eABF settings or state."""


# ----------------------------------------------------------------------------------------------------------
# units helpers
# ----------------------------------------------------------------------------------------------------------
def _strip(value, unit_name: str):
    """Plain float(s) in OpenMM default units from a Quantity or plain number/sequence."""
    from openmm import unit

    if unit.is_quantity(value):
        target = {
            "ps": unit.picosecond,
            "amu": unit.dalton,
            "K": unit.kelvin,
            "nm": unit.nanometer,
        }.get(unit_name)
        if target is not None and value.unit.is_compatible(target):
            return value.value_in_unit(target)
        if unit_name == "energy":
            return value.value_in_unit_system(unit.md_unit_system)
        return value.value_in_unit_system(unit.md_unit_system)
    return value


def _per_dim(value, d: int, name: str, cast=float) -> List:
    value = _strip(value, "energy")
    if isinstance(value, (list, tuple, np.ndarray)):
        vals = [cast(_strip(v, "energy")) for v in value]
        if len(vals) != d:
            raise EABFError(f"{name} must have {d} entries (one per CV component), got {len(vals)}: {vals}")
        return vals
    return [cast(value)] * d


def coupled_czar_bins(bins: Sequence[int], grid_min: Sequence[float], grid_max: Sequence[float],
                      kappa: Sequence[float], temperature: float) -> List[int]:
    """Bins of a CZAR xi grid near the coupling width: ``bins * ceil(ABF bin width / sqrt(kT / kappa))`` per
    component (at least ``bins``), so each CZAR bin is no wider than the width of xi's spread about lambda.

    The CZAR gradient's ``-kT d ln n / dz`` term and the conditional mean force vary on that scale along a learned
    CV; bins several coupling widths wide average them away unevenly (a bias of several kJ/mol inside one state).
    """
    from .estimators import kT

    out = []
    for b, lo, hi, k in zip(bins, grid_min, grid_max, kappa):
        width = (float(hi) - float(lo)) / int(b)
        sigma = math.sqrt(kT(temperature) / float(k))
        out.append(int(b) * max(1, math.ceil(width / sigma - 1e-9)))
    return out


# ----------------------------------------------------------------------------------------------------------
# readout encoding
# ----------------------------------------------------------------------------------------------------------
def readout_layout(d: int, n_bins: int, n_zbins: int, smooth: bool = False,
                   solver: int = 0) -> Tuple[Dict[str, Tuple[int, int]], int]:
    """(offset, length) of each part of the read-out vector (``_EABFCore.flat_state``), and its total length.

    Parts: ``info`` = [xi, lambda, applied bias] (3d); ``acc`` = the accumulator array (n_bins + n_zbins, 1 + d)
    row-major (lambda-grid rows [count, sum kappa (lambda - xi)], then CZAR xi-grid rows [zcount, czar sum]);
    ``last`` (2d); ``n_samples`` (1); with the smooth bias ``pot``, its potential on the lambda-bin centres (n_bins),
    and ``pot_cover``, each bin's cover when that potential was integrated (n_bins; ``_EABFCore._integrate``);
    with a graph-safe smooth bias also ``solver``, the state of the solve for the next potential (``solver``
    values, ``_EABFCore._solve_step``).
    """
    layout, offset = {}, 0
    parts = [("info", 3 * d), ("acc", (n_bins + n_zbins) * (1 + d)), ("last", 2 * d), ("n_samples", 1)]
    if smooth:
        parts += [("pot", n_bins), ("pot_cover", n_bins)] + ([("solver", solver)] if solver else [])
    for key, length in parts:
        layout[key] = (offset, length)
        offset += length
    return layout, offset


def decode_readout(slots: np.ndarray) -> np.ndarray:
    """Decode ``(k, 3)`` force rows produced in read-out mode into ``k`` float64 values (bit-exact).

    Row layout: x = mantissa bits 0-21, y = bits 22-43, z = bits 44-52 + 512*sign + 1024*(exponent + 1100), with
    ``value = (-1)^sign * mantissa * 2^(exponent - 53)`` (``numpy.frexp`` convention).
    """
    s = np.rint(np.asarray(slots, dtype=np.float64)).astype(np.int64)
    top = s[:, 2] & 511
    neg = (s[:, 2] >> 9) & 1
    e = (s[:, 2] >> 10) - 1100
    mant = (top << 44) | (s[:, 1] << 22) | s[:, 0]
    v = np.ldexp(mant.astype(np.float64), (e - 53).astype(np.int32) if hasattr(e, "astype") else e - 53)
    return np.where(neg == 1, -v, v)


def encode_readout_numpy(values: np.ndarray) -> np.ndarray:
    """Reference implementation of the device encoding (used in tests)."""
    m, e = np.frexp(np.asarray(values, dtype=np.float64))
    mant = (np.abs(m) * 2.0**53).astype(np.int64)
    neg = (m < 0).astype(np.int64)
    out = np.stack([mant & 4194303, (mant >> 22) & 4194303, (mant >> 44) + 512 * neg + 1024 * (e + 1100)], axis=1)
    return out.astype(np.float64)


# ----------------------------------------------------------------------------------------------------------
# the TorchScript force module
# ----------------------------------------------------------------------------------------------------------
class _EABFCore(torch.nn.Module):
    """State, constants and bookkeeping of the eABF force; subclasses supply the CV route.

    Op budget matters more than arithmetic here (TorchScript interprets each aten op, ~1-3 us on a CPU), so the
    common path is written with constant tensors precomputed in ``__init__``, one ``index_add_`` into a single
    float64 accumulator, masks folded into values instead of branches, and no host synchronisation except the
    read-out switch (graph-safe cores: none).
    """

    # compile-time: the scripted module of a graph-safe core has no other path; one without shared accumulators
    # has no shared-bias ops
    __constants__ = ["graph_safe", "has_shared", "close_rings", "gate_unreached", "smooth"]

    def __init__(
        self,
        cv: torch.nn.Module,
        n_particles: int,
        ext_index: List[int],
        kappa: List[float],
        pin_k: List[float],
        pin_centres: List[List[float]],
        grid_min: List[float],
        grid_max: List[float],
        bins: List[int],
        periodic: List[bool],
        full_samples: int,
        min_samples: int,
        wall_kappa: List[float],
        slot_index: List[int],
        state: Optional["EABFState"] = None,
        zbins: Optional[List[int]] = None,
        graph_safe: bool = False,
        shared: Optional["EABFState"] = None,
        close_rings: bool = False,
        gate_unreached: bool = False,
        smooth: bool = False,
        smooth_interval: int = 500,
    ):
        super().__init__()
        d = len(ext_index)
        # graph_safe: one code path for forces and read-out, no host synchronisation (CUDA-graph capture)
        self.graph_safe = bool(graph_safe)
        f64 = torch.float64
        self.cv = cv
        self.d: int = d
        self.n_particles: int = int(n_particles)
        nb = int(np.prod(bins))
        self.n_bins: int = nb
        zbins = list(bins) if zbins is None else list(zbins)
        nz = int(np.prod(zbins))
        self.n_zbins: int = nz

        def t(values):
            return torch.tensor(values, dtype=f64)

        span = [b - a for a, b in zip(grid_min, grid_max)]
        self.register_buffer("ext_index", torch.tensor(ext_index, dtype=torch.long))
        self.register_buffer("neg_kappa", t([-k for k in kappa]))
        # wraps: x - P round(x / P) with P = 2*pi for periodic components, 0 (no wrap) otherwise
        self.register_buffer("wrap_period", t([TWO_PI if p else 0.0 for p in periodic]))
        self.any_periodic: bool = bool(any(periodic))
        self.register_buffer("periodic_mask", torch.tensor(periodic, dtype=torch.bool))
        # rings: the lines of lambda bins along a periodic component. Their applied ABF gradient is made
        # circulation-free once every bin of the ring was visited (see _ring_mean); compiled out without rings.
        self.close_rings = bool(close_rings and any(periodic))
        # the rings through one lambda bin b, as one gather: for periodic component k, bins b + (i - i_k) stride_k,
        # i = 0..bins_k-1 (i_k: b's index along k); ring_owner marks which component each gathered row serves
        ring = [k for k in range(d) if periodic[k]]
        row_stride = [int(np.prod(bins[k + 1:])) for k in range(d)]
        self.register_buffer("ring_stride", torch.tensor([row_stride[k] for k in ring], dtype=torch.long))
        self.register_buffer("ring_bins", torch.tensor([int(bins[k]) for k in ring], dtype=torch.long))
        self.register_buffer("ring_of_row", torch.tensor([r for r, k in enumerate(ring) for _ in range(bins[k])],
                                                         dtype=torch.long))
        self.register_buffer("ring_offset", torch.tensor([i * row_stride[k] for k in ring for i in range(bins[k])],
                                                         dtype=torch.long))
        owner = torch.zeros(len(self.ring_offset), d, dtype=f64)
        owner[torch.arange(len(owner)), torch.tensor([k for k in ring for _ in range(bins[k])], dtype=torch.long)] = 1.0
        self.register_buffer("ring_owner", owner)
        self.register_buffer("ring_other", owner == 0.0)
        self.register_buffer("inv_period", t([1.0 / TWO_PI] * d))
        # binned points come as [xi; lambda] (2, d): row 0 on the CZAR xi grid (zbins), row 1 on the ABF lambda grid
        grids = (zbins, bins)
        self.register_buffer("inv_width", t([[b / s for b, s in zip(g, span)] for g in grids]))
        self.register_buffer("bin_origin", t([[-a * b / s for a, b, s in zip(grid_min, g, span)] for g in grids]))
        self.register_buffer("inv_bins", t([[1.0 / b for b in g] for g in grids]))
        self.register_buffer("wrap_bins", t([[float(b) if p else 0.0 for b, p in zip(g, periodic)] for g in grids]))
        self.register_buffer("bin_zero", t([0.0] * d))
        self.register_buffer("bin_last", t([[b - 1.0 for b in g] for g in grids]))
        self.register_buffer("strides", t([[float(np.prod(g[i + 1:])) for i in range(d)] for g in grids]))
        # rows of the accumulator: lambda bins first, then xi (z) bins
        self.register_buffer("row_offset", t([float(nb), 0.0]))
        self.register_buffer("one", t([1.0]))
        # harmonic restraints of the extended particles, one (d, 3) clamp for walls (x) and y/z pins:
        # displacement = p - clamp(p, lo, hi), force = -k * displacement (walls: k = 0 for periodic components)
        lo = [[grid_min[i], pin_centres[i][0], pin_centres[i][1]] for i in range(d)]
        hi = [[grid_max[i], pin_centres[i][0], pin_centres[i][1]] for i in range(d)]
        kr = [[0.0 if periodic[i] else wall_kappa[i], pin_k[i], pin_k[i]] for i in range(d)]
        self.register_buffer("restr_lo", t(lo))
        self.register_buffer("restr_hi", t(hi))
        self.register_buffer("neg_restr_k", -t(kr))
        self.register_buffer("xcol", t([[1.0, 0.0, 0.0]]))
        cv_atoms = [int(a) for a in getattr(cv, "atom_indices", torch.zeros(0, dtype=torch.long)).reshape(-1).tolist()]
        self.register_buffer("force_index", torch.tensor(cv_atoms + list(ext_index), dtype=torch.long))
        self.register_buffer("slot_index", torch.tensor(slot_index, dtype=torch.long))
        self.full_samples: float = float(full_samples)
        self.min_samples: float = float(min_samples)
        self.step_ramp: bool = not full_samples > min_samples
        den = float(full_samples - min_samples) if full_samples > min_samples else 1.0
        self.register_buffer("ramp_scale", t([1.0 / den]))
        self.register_buffer("ramp_shift", t([-float(min_samples) / den]))
        # accumulators (float64 on the device, updated in forward): one (nb + nz, 1 + d) array,
        # rows 0..nb-1: per lambda bin [count, sum kappa (lambda - xi)]; rows nb..nb+nz-1: per xi bin [zcount, czar]
        self.register_buffer("acc", torch.zeros(nb + nz, 1 + d, dtype=f64))
        # [xi; lambda] of the last sample (2, d); sentinel: never a real sample
        self.register_buffer("last", torch.full((2, d), _NO_SAMPLE, dtype=f64))
        self.register_buffer("n_samples", torch.zeros(1, dtype=f64))
        if state is not None:
            self.acc[:nb, 0].copy_(torch.as_tensor(state.count.reshape(nb), dtype=f64))
            self.acc[:nb, 1:].copy_(torch.as_tensor(state.grad.reshape(nb, d), dtype=f64))
            self.acc[nb:, 0].copy_(torch.as_tensor(state.zcount.reshape(nz), dtype=f64))
            self.acc[nb:, 1:].copy_(torch.as_tensor(state.czar.reshape(nz, d), dtype=f64))
            self.last.copy_(torch.as_tensor(state.last, dtype=f64).reshape(2, d))
            self.n_samples.fill_(float(state.n_samples))
        # the ABF bias of a lambda bin only once the CV xi has been sampled in it (in a CZAR bin overlapping it):
        # where xi cannot go, lambda's mean force is the spring's pull back to xi, and a bias cancelling it lets
        # lambda run off a bounded CV. Periodic grids have no such bins (their range is the period): compiled out.
        self.gate_unreached = bool(gate_unreached and not all(periodic))
        self.register_buffer("zrows_of_bin", torch.tensor(
            _covering_rows(grid_min, grid_max, bins, zbins, nb) if self.gate_unreached else [[0]], dtype=torch.long))
        # other walkers' accumulators in the layout of `acc` (nb + nz, 1 + d): added to this walker's rows where the
        # bias and its gate are read, never written (shared-bias multiple walkers; see ExtendedABF sharedState)
        self.has_shared = shared is not None
        # samples in the other walkers' sums: a stored smooth potential integrated with other sums is stale
        self.shared_samples: float = 0.0 if shared is None else float(np.sum(shared.count))
        self.register_buffer("shared", torch.zeros(nb + nz, 1 + d, dtype=f64))
        if shared is not None:
            self.shared[:nb, 0].copy_(torch.as_tensor(shared.count.reshape(nb), dtype=f64))
            self.shared[:nb, 1:].copy_(torch.as_tensor(shared.grad.reshape(nb, d), dtype=f64))
            self.shared[nb:, 0].copy_(torch.as_tensor(shared.zcount.reshape(nz), dtype=f64))
            self.shared[nb:, 1:].copy_(torch.as_tensor(shared.czar.reshape(nz, d), dtype=f64))
        # smooth bias: the force on lambda is the gradient of the multilinear interpolant of a potential `pot` on the
        # lambda-bin centres, the least-squares integral of the applied (ramped) per-bin means, refreshed every
        # `smooth_interval` samples. In 2D and 3D a bias constant over each bin is not a gradient (its tangential
        # component jumps across bin edges) and then CZAR's estimate is biased; this one is exactly conservative
        # (benchmarks/static_bias_check.py). Compiled out when off.
        self.smooth = bool(smooth)
        self.smooth_interval: float = float(smooth_interval)
        self.smooth_iterations: int = 8 * max(bins)  # conjugate gradients: a few times the longest grid line
        corners = [[float((c >> (d - 1 - k)) & 1) for k in range(d)] for c in range(2 ** d)]
        self.register_buffer("corner", t(corners))  # (2^d, d): which end of the cell along each axis
        self.register_buffer("corner_sign", 2.0 * t(corners).t() - 1.0)  # (d, 2^d)
        # (d, 2^d, d): for the derivative along k, the other axes' weights (True) and a 1 for axis k itself
        self.register_buffer("other_axes", torch.tensor(
            [[[m != k for m in range(d)] for _ in range(2 ** d)] for k in range(d)], dtype=torch.bool))
        # lambda -> position in units of bins with 0 at the first centre; periodic components wrap into [0, bins)
        self.register_buffer("cell_inv_width", t([b / s_ for b, s_ in zip(bins, span)]))
        self.register_buffer("cell_origin", t([-a * b / s_ - 0.5 for a, b, s_ in zip(grid_min, bins, span)]))
        self.register_buffer("cell_wrap", t([float(b) if p else 0.0 for b, p in zip(bins, periodic)]))
        self.register_buffer("cell_inv_bins", t([1.0 / b for b in bins]))
        # lowest corner: periodic 0..bins-1 (the upper corner wraps), else 0..bins-2 (outer half bins extrapolate)
        self.register_buffer("cell_last", t([float(b - 1) if p else float(max(b - 2, 0)) for b, p in zip(bins, periodic)]))
        self.register_buffer("cell_strides", t([float(st) for st in row_stride]))
        # links between neighbouring lambda bins (the estimators' own, seam included); placeholders when off
        if smooth:
            from .estimators import grid_links

            li, lj, lk = grid_links(bins, periodic)
        else:
            li, lj, lk = np.zeros(1, dtype=int), np.zeros(1, dtype=int), np.zeros(1, dtype=int)
        self.register_buffer("link_i", torch.as_tensor(li, dtype=torch.long))
        self.register_buffer("link_j", torch.as_tensor(lj, dtype=torch.long))
        self.register_buffer("link_axis", torch.as_tensor(lk, dtype=torch.long).unsqueeze(1))
        self.register_buffer("link_h", t([span[k] / bins[k] for k in lk.tolist()]))
        self.register_buffer("pot", torch.zeros(nb if smooth else 1, dtype=f64))
        # each bin's cover when `pot` was integrated: where a cell's corners all had cover 1 then, the force is the
        # potential's gradient; beyond the edge of the sampled region it blends into the binned bias (see _fbias)
        self.register_buffer("pot_cover", torch.zeros(nb if smooth else 1, dtype=f64))
        # graph-safe cores solve for the next potential across the samples between two refreshes (_solve_step):
        # the conjugate-gradient state, saved with the eABF state (EABFState.bias_solver) so a resume is exact
        solving = self.smooth and self.graph_safe
        ns, nl = (nb, len(li)) if solving else (1, 1)
        self.solver_len: int = 5 * nb + len(li) + 2 if solving else 0
        self.solve_steps: int = -(-self.smooth_iterations // max(int(smooth_interval), 1)) if solving else 0
        for name in ("cg_x", "cg_r", "cg_p", "cg_diag", "cg_cover"):
            self.register_buffer(name, torch.zeros(ns, dtype=f64))
        self.register_buffer("cg_w", torch.zeros(nl, dtype=f64))
        self.register_buffer("cg_rz", torch.zeros(1, dtype=f64))
        self.register_buffer("cg_it", torch.zeros(1, dtype=f64))
        if self.smooth:
            with torch.no_grad():
                stored = None if state is None else state.bias_potential
                stored_cover = None if state is None else state.bias_potential_cover
                # integrated with the same other walkers' sums as this force applies (states from before the
                # field come from runs without them)
                stored_shared = 0.0 if state is None else float(state.bias_potential_shared_samples or 0.0)
                same_shared = stored_shared == self.shared_samples
                resumed = stored is not None and stored_cover is not None and same_shared
                if resumed:  # a resume applies the potential the run had
                    self.pot.copy_(torch.as_tensor(np.asarray(stored).reshape(nb), dtype=f64))
                    self.pot_cover.copy_(torch.as_tensor(np.asarray(stored_cover).reshape(nb), dtype=f64))
                else:
                    self._refresh()
                solver = None if state is None else state.bias_solver
                if self.graph_safe:
                    if resumed and solver is not None and np.size(solver) == self.solver_len:
                        self._set_solver(torch.as_tensor(np.asarray(solver, dtype=float).reshape(-1), dtype=f64))
                    else:  # a solve already done, from the accumulators now: committed at the next refresh
                        # (not resumed: the potential just integrated is that solve)
                        x, cover = self._integrate() if resumed else (self.pot, self.pot_cover)
                        self.cg_x.copy_(x)
                        self.cg_cover.copy_(cover)
                        self.cg_it.fill_(float(self.smooth_iterations))

    def compute(
        self, positions: torch.Tensor, box: torch.Tensor, sample: torch.Tensor, readout: torch.Tensor,
        chunk: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Energy and forces, or a read-out chunk; ``_forces``/``_readout`` come from the CV route subclass.

        Graph-safe cores take one branch-free path: the step's forces are computed either way (sampling off during
        a read-out) and the read-out rows replace them when ``readout`` is set.
        """
        if self.graph_safe:
            return self._forces_or_readout(positions, box, sample, readout, chunk)
        if readout.item() > 0.5:
            return self._readout(positions, box, chunk)
        return self._forces(positions, box, sample)

    def _select_readout(self, positions: torch.Tensor, xi: torch.Tensor, lam: torch.Tensor, fbias: torch.Tensor,
                        energy: torch.Tensor, forces: torch.Tensor, readout: torch.Tensor, chunk: torch.Tensor) -> Tuple[
            torch.Tensor, torch.Tensor]:
        """(energy, forces) of a step, or of the read-out chunk when ``readout`` > 0.5 (masked, no branch)."""
        ro_energy, ro_forces = self.read_chunk(positions, torch.cat([xi, lam, fbias]), chunk)
        on = readout > 0.5
        return torch.where(on, ro_energy, energy), torch.where(on, ro_forces, forces)

    def _bin(self, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Accumulator rows (2,) and in-grid flags (2,) of the points v = [xi, lambda] (2, d), float64."""
        # (v - gridMin) / width, in bins; a NaN (a blown-up state) reads as outside the grid, never as a row index
        t = torch.nan_to_num(torch.addcmul(self.bin_origin, v, self.inv_width), nan=-1.0)
        if self.any_periodic:  # periodic components into [0, bins); always inside (a wrap may round to bins)
            t = t - self.wrap_bins * torch.floor(t * self.inv_bins)
            i = torch.floor(t)
            ic = torch.clamp(i, self.bin_zero, self.bin_last)
            inside = ((i == ic) | self.periodic_mask).all(dim=-1)
        else:
            i = torch.floor(t)
            ic = torch.clamp(i, self.bin_zero, self.bin_last)
            inside = (i == ic).all(dim=-1)
        return ((ic * self.strides).sum(dim=1) + self.row_offset).to(torch.long), inside

    def _forces(self, positions: torch.Tensor, box: torch.Tensor, sample: torch.Tensor) -> Tuple[
            torch.Tensor, torch.Tensor]:
        step = self._step(positions, box, sample)
        return step[0], step[1]

    def _forces_or_readout(self, positions: torch.Tensor, box: torch.Tensor, sample: torch.Tensor,
                           readout: torch.Tensor, chunk: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The graph-safe path: the step (sampling off during a read-out), then the read-out rows if asked."""
        e, f, xi, lam, fbias = self._step(positions, box, sample * (readout < 0.5).to(sample.dtype))
        with torch.no_grad():
            out = self._select_readout(positions, xi, lam, fbias, e, f, readout, chunk)
        return out

    def _readout(self, positions: torch.Tensor, box: torch.Tensor, chunk: torch.Tensor) -> Tuple[
            torch.Tensor, torch.Tensor]:
        """Read-out chunk ``chunk`` of :meth:`flat_state`. Only the first chunk(s) carry [xi, lambda, bias]; the
        others skip the CV, which would cost most of each call of a whole-state read (thousands of chunks for a
        fine 2D CZAR grid)."""
        with torch.no_grad():
            if chunk.item() * self.slot_index.shape[0] < 3 * self.d:
                lam = positions.index_select(0, self.ext_index).to(torch.float64)[:, 0]
                info = self._info(self._xi(positions, box), lam)
            else:
                info = torch.zeros(3 * self.d, dtype=torch.float64, device=positions.device)
            energy, forces = self.read_chunk(positions, info, chunk)
        return energy, forces

    def _bias_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Accumulator rows (R, 1 + d), this walker's plus the other walkers' when shared: the binned points'
        ``rows`` [xi, lambda] (row 1 sets the bias) and, with the gate, the CZAR xi bins overlapping lambda's bin
        (rows 2.., whose xi counts say whether the bias applies)."""
        if self.gate_unreached:
            rows = torch.cat([rows, self.zrows_of_bin.index_select(0, rows.narrow(0, 1, 1)).view(-1)])
        got = self.acc.index_select(0, rows)
        if self.has_shared:
            got = got + self.shared.index_select(0, rows)
        return got

    def _ramp(self, n: torch.Tensor) -> torch.Tensor:
        """Share of the full bias in bins holding ``n`` samples: a step at fullSamples, or the linear ramp
        clip((n - minSamples) / (fullSamples - minSamples), 0, 1)."""
        if self.step_ramp:
            return (n >= self.full_samples).to(torch.float64)
        return torch.clamp(torch.addcmul(self.ramp_shift, n, self.ramp_scale), 0.0, 1.0)

    def _fbias(self, got: torch.Tensor, inside: torch.Tensor, lam_row: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """ABF bias force on lambda (d,) from the rows of :meth:`_bias_rows`: lambda bin ``lam_row`` (1,)'s
        [n, sum kappa (lambda - xi)], and with the gate the xi count where lambda is; ``inside``: lambda on the grid.
        With the smooth bias, the gradient of the interpolated potential at ``lam`` (d,) where the cell around
        ``lam`` lies inside the integrated region, the bin's mean at its edge (:meth:`_smooth_gradient`)."""
        row = got[1]
        n = row[0:1]
        grad = row[1:] / torch.clamp(n, min=1.0)
        if self.close_rings:
            grad = grad - self._ring_mean(lam_row)
        grad = grad * self._ramp(n)
        if self.smooth:
            smooth, share = self._smooth_gradient(lam)
            grad = torch.lerp(grad, smooth, share)
        if self.gate_unreached:  # rows 2..: xi counts of the CZAR bins overlapping lambda's bin
            reached = got.narrow(0, 2, got.shape[0] - 2).select(1, 0).sum(0, True) > 0.0
            return grad * (inside & reached)
        return grad * inside

    def _laplacian(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """(D^T W D + eps) x for the lambda grid's links (D x: x_j - x_i per link, W: link weights ``w``)."""
        dw = w * (x.index_select(0, self.link_j) - x.index_select(0, self.link_i))
        return torch.zeros_like(x).index_add_(0, self.link_j, dw).index_add_(0, self.link_i, -dw) + 1e-6 * x

    def _refresh(self) -> None:
        """Integrate the smooth bias's potential from the accumulators now, and keep each bin's share in it."""
        pot, cover = self._integrate()
        self.pot.copy_(pot)
        self.pot_cover.copy_(cover)

    def _integrate(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Potential on the lambda-bin centres whose differences best match the applied per-bin means, and each
        bin's cover: the largest weight of its links (1 where the bin or a neighbour has the full bias).

        Each link between neighbouring bins i, j along axis k asks ``pot_j - pot_i = h_k g_k`` with ``g`` the
        ramp-weighted mean of both bins' ramped mean forces, and has the larger of their ramps as its weight. So
        the potential extends one bin beyond the sampled region with the slope of the last sampled bin (a bin with
        no samples has no mean force of its own), as the binned bias pushes up to the edge of its bin: the walker
        advances as fast, and the bias is a gradient there too. Links between two bins below ``minSamples`` have
        weight 0 (a free, Neumann boundary). Solved by Jacobi-preconditioned conjugate gradients from zero with a
        fixed number of iterations, so the result is a deterministic function of the accumulators (a force rebuilt
        from a saved state applies the same potential). The tiny diagonal shift fixes the free constant of each
        connected set of bins.
        """
        r, w, diag, cover = self._poisson()
        x = torch.zeros_like(r)
        z = r / diag
        p = z
        rz = torch.dot(r, z)
        for _ in range(self.smooth_iterations):
            x, r, p, rz = self._cg_iteration(x, r, p, rz, w, diag)
        return x, cover

    def _poisson(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The least-squares problem of :meth:`_integrate` from the accumulators now: its right-hand side (bins),
        link weights (links), Jacobi diagonal (bins) and each bin's cover (bins)."""
        rows = self.acc.narrow(0, 0, self.n_bins)
        if self.has_shared:
            rows = rows + self.shared.narrow(0, 0, self.n_bins)
        n = rows.select(1, 0)
        ramp = self._ramp(n)
        g = rows.narrow(1, 1, self.d) * (ramp / torch.clamp(n, min=1.0)).unsqueeze(1)
        ri, rj = ramp.index_select(0, self.link_i), ramp.index_select(0, self.link_j)
        w = torch.maximum(ri, rj)
        gi = g.index_select(0, self.link_i).gather(1, self.link_axis).squeeze(1)
        gj = g.index_select(0, self.link_j).gather(1, self.link_axis).squeeze(1)
        wb = w * (ri * gi + rj * gj) / torch.clamp(ri + rj, min=1e-12) * self.link_h
        r = torch.zeros_like(n).index_add_(0, self.link_j, wb).index_add_(0, self.link_i, -wb)
        diag = torch.zeros_like(n).index_add_(0, self.link_i, w).index_add_(0, self.link_j, w) + 1e-6
        cover = torch.zeros_like(n).scatter_reduce(0, self.link_i, w, reduce="amax")
        return r, w, diag, cover.scatter_reduce(0, self.link_j, w, reduce="amax")

    def _cg_iteration(self, x: torch.Tensor, r: torch.Tensor, p: torch.Tensor, rz: torch.Tensor, w: torch.Tensor,
                      diag: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One Jacobi-preconditioned conjugate-gradient iteration on (D^T W D) x = r0: (x, r, p, r.z) after it."""
        ap = self._laplacian(p, w)
        alpha = rz / torch.clamp(torch.dot(p, ap), min=1e-300)
        x = x + alpha * p
        r = r - alpha * ap
        z = r / diag
        rz_next = torch.dot(r, z)
        p = z + (rz_next / torch.clamp(rz, min=1e-300)) * p
        return x, r, p, rz_next

    def _solve_step(self, refresh: torch.Tensor, take: torch.Tensor) -> None:
        """The graph-safe refresh (no branch, no host synchronisation): at a refresh sample the solution the
        previous interval's samples worked out becomes the potential and a new solve starts from the accumulators
        now; every sample taken advances it by ``solve_steps`` conjugate-gradient iterations, the ordinary path's
        ``smooth_iterations`` in all. The potential is the ordinary path's, one ``smooth_interval`` later."""
        self.pot.copy_(torch.where(refresh, self.cg_x, self.pot))
        self.pot_cover.copy_(torch.where(refresh, self.cg_cover, self.pot_cover))
        r0, w0, diag0, cover0 = self._poisson()
        z0 = r0 / diag0
        x = torch.where(refresh, torch.zeros_like(r0), self.cg_x)
        r = torch.where(refresh, r0, self.cg_r)
        p = torch.where(refresh, z0, self.cg_p)
        rz = torch.where(refresh, torch.dot(r0, z0).unsqueeze(0), self.cg_rz)
        w = torch.where(refresh, w0, self.cg_w)
        diag = torch.where(refresh, diag0, self.cg_diag)
        it = torch.where(refresh, torch.zeros_like(self.cg_it), self.cg_it)
        self.cg_cover.copy_(torch.where(refresh, cover0, self.cg_cover))
        for _ in range(self.solve_steps):
            go = take & (it < self.smooth_iterations)
            xn, rn, pn, rzn = self._cg_iteration(x, r, p, rz, w, diag)
            x = torch.where(go, xn, x)
            r = torch.where(go, rn, r)
            p = torch.where(go, pn, p)
            rz = torch.where(go, rzn.unsqueeze(0), rz)
            it = it + go.to(torch.float64)
        self.cg_x.copy_(x)
        self.cg_r.copy_(r)
        self.cg_p.copy_(p)
        self.cg_rz.copy_(rz)
        self.cg_w.copy_(w)
        self.cg_diag.copy_(diag)
        self.cg_it.copy_(it)

    def _smooth_gradient(self, lam: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Gradient (d,) at ``lam`` of the multilinear interpolant of ``pot`` between the bin centres around it
        (kJ/mol per CV unit), and the share (1,) of it in the applied bias: the smallest cover (see
        :meth:`_integrate`) of those bins when ``pot`` was integrated. Beyond the outer centres of a non-periodic
        axis the end cells' interpolant continues.

        A bin with cover 0 at the last refresh (it and its neighbours below ``minSamples``) took part in no link of
        the integral, so its potential is only the solver's zero: a cell with such a corner would push lambda back
        from the edge of the sampled region with a force of the potential's height over a bin width. There
        (share 0) the binned bias applies, which is zero in bins without samples; share 1 in the sampled region and
        one bin around it, where the bias is exactly a gradient."""
        # a NaN lambda (a blown-up state; _bin reads it as outside, so the bias is 0) must not become a row index
        u = torch.nan_to_num(torch.addcmul(self.cell_origin, lam, self.cell_inv_width), nan=0.0)
        u = u - self.cell_wrap * torch.floor(u * self.cell_inv_bins)  # periodic axes into [0, bins)
        low = torch.clamp(torch.floor(u), self.bin_zero, self.cell_last)
        frac = u - low
        cells = low.unsqueeze(0) + self.corner  # (2^d, d)
        cells = cells - self.cell_wrap * torch.floor(cells * self.cell_inv_bins)
        rows = (cells * self.cell_strides).sum(1).to(torch.long)
        p = self.pot.index_select(0, rows)
        share = self.pot_cover.index_select(0, rows).min().unsqueeze(0)
        weight = torch.where(self.corner > 0.5, frac, 1.0 - frac)  # (2^d, d)
        others = torch.where(self.other_axes, weight.unsqueeze(0), torch.ones_like(weight).unsqueeze(0)).prod(2)
        return (others * self.corner_sign * p.unsqueeze(0)).sum(1) * self.cell_inv_width, share

    def _ring_mean(self, lam_row: torch.Tensor) -> torch.Tensor:
        """Per component, the ramp-weighted mean ABF gradient over the ring through lambda bin ``lam_row``; zero
        for non-periodic components and for rings with a bin never visited.

        A true mean force integrates to zero around a periodic coordinate; the running estimate does not (noise,
        and the current its own circulation drives). Applied as is, that circulation is a net torque on lambda,
        which keeps lambda rotating and the estimate off (issue 14's phi closure). Subtracting this mean makes
        the applied bias conservative around every ring the system has gone round (every bin visited: from then
        on a current can flow, even through bins whose bias is still ramped to zero) and leaves a converged
        estimate unchanged. Before that the sampled bins form an interval, where any bias is conservative.
        All rings through the bin are gathered at once (one index_select; ~20 ops whatever d).
        """
        k_index = torch.remainder(torch.div(lam_row, self.ring_stride, rounding_mode="floor"), self.ring_bins)
        base = lam_row - k_index * self.ring_stride  # first bin of each ring through lam_row
        rows = base.index_select(0, self.ring_of_row) + self.ring_offset
        grid = self.acc.index_select(0, rows)
        if self.has_shared:
            grid = grid + self.shared.index_select(0, rows)
        n = grid.select(1, 0)
        ramp = self._ramp(n)
        applied = grid.narrow(1, 1, self.d) * (ramp / torch.clamp(n, min=1.0)).unsqueeze(1) * self.ring_owner
        weight = (ramp.unsqueeze(1) * self.ring_owner).sum(0)  # (d,): sum of ramps around each component's ring
        closed = ((n > 0.0).unsqueeze(1) | self.ring_other).all(0)  # every bin of the ring visited
        return applied.sum(0) / torch.clamp(weight, min=1e-12) * closed.to(torch.float64)

    def _coupling(self, xi: torch.Tensor, ext: torch.Tensor, sample: torch.Tensor) -> Tuple[
            torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sampling, ABF bias, walls and pins from xi (d,) and the extended positions (d, 3), all float64.

        Returns (f_lam = kappa (lambda - xi) (d,), forces on the extended particles (d, 3), energy, applied ABF
        bias force on lambda (d,)).
        """
        lam = ext.select(1, 0)
        diff = xi - lam
        if self.any_periodic:
            diff = diff - self.wrap_period * torch.round(diff * self.inv_period)
        f_lam = self.neg_kappa * diff  # kappa (lambda - xi) = -dE/dxi; the coupling force on lambda is -f_lam
        # ---- sampling: masked, no host synchronisation; an already-sampled (xi, lambda) is never sampled twice
        v = torch.stack([xi, lam])  # (2, d), the layout of `last`
        take = (v != self.last).any() & (sample > 0.5)
        self.last.copy_(torch.where(take, v, self.last))
        self.n_samples.add_(take)
        rows, inside = self._bin(v)
        self.acc.index_add_(0, rows, torch.outer((inside & take).to(torch.float64), torch.cat([self.one, f_lam])))
        if self.smooth:  # refresh every smooth_interval samples
            refresh = take & (torch.remainder(self.n_samples, self.smooth_interval) == 0.0).all()
            if self.graph_safe:
                self._solve_step(refresh, take)
            elif bool(refresh.item()):  # a host synchronisation
                self._refresh()
        # ---- ABF bias on lambda (estimate including this sample)
        fbias = self._fbias(self._bias_rows(rows), inside[1], rows.narrow(0, 1, 1), lam)
        # ---- walls (x, non-periodic components) and y/z pins
        ex = ext - torch.clamp(ext, self.restr_lo, self.restr_hi)
        f_r = self.neg_restr_k * ex
        f_ext = torch.addcmul(f_r, self.xcol, (fbias - f_lam).unsqueeze(1))
        energy = -0.5 * (torch.dot(f_lam, diff) + (f_r * ex).sum())
        return f_lam, f_ext, energy, fbias

    def _info(self, xi: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """[xi, lambda, applied ABF bias] (3d,) from the current accumulators (same ops as the force path)."""
        rows, inside = self._bin(torch.stack([xi, lam]))
        fbias = self._fbias(self._bias_rows(rows), inside[1], rows.narrow(0, 1, 1), lam)
        return torch.cat([xi, lam, fbias])

    def _solver(self) -> torch.Tensor:
        """The graph-safe solve's state as one vector (the ``solver`` part of :func:`readout_layout`)."""
        return torch.cat([self.cg_x, self.cg_r, self.cg_p, self.cg_diag, self.cg_cover, self.cg_w, self.cg_rz,
                          self.cg_it])

    @torch.jit.unused
    def _set_solver(self, v: torch.Tensor) -> None:
        nb = self.n_bins
        for k, name in enumerate(("cg_x", "cg_r", "cg_p", "cg_diag", "cg_cover")):
            getattr(self, name).copy_(v[k * nb:(k + 1) * nb])
        self.cg_w.copy_(v[5 * nb:-2])
        self.cg_rz.copy_(v[-2:-1])
        self.cg_it.copy_(v[-1:])

    def flat_state(self, info: torch.Tensor) -> torch.Tensor:
        """The read-out vector, in the order of :func:`readout_layout` (the accumulator array row-major)."""
        parts = [info, self.acc.reshape(-1), self.last.reshape(-1), self.n_samples]
        if self.smooth:
            parts += [self.pot, self.pot_cover]
            if self.graph_safe:
                parts.append(self._solver())
        return torch.cat(parts)

    def read_chunk(self, positions: torch.Tensor, info: torch.Tensor, chunk: torch.Tensor) -> Tuple[
            torch.Tensor, torch.Tensor]:
        flat = self.flat_state(info)
        nslot = self.slot_index.shape[0]
        # the chunk index as a tensor: no host synchronisation
        idx = torch.arange(nslot, device=flat.device) + (chunk * nslot).to(torch.long)
        valid = idx < flat.shape[0]
        vals = torch.where(valid, flat.index_select(0, torch.clamp(idx, max=flat.shape[0] - 1)), torch.zeros_like(idx, dtype=torch.float64))
        # float64 -> (mantissa, exponent) -> three integers < 2^22 (exact in float32 and fixed point)
        m, e = torch.frexp(vals)
        neg = (m < 0).to(torch.int64)
        mant = (m.abs() * 9007199254740992.0).to(torch.int64)  # |m| * 2^53, an integer < 2^53
        s0 = torch.bitwise_and(mant, 4194303)
        s1 = torch.bitwise_and(torch.bitwise_right_shift(mant, 22), 4194303)
        s2 = torch.bitwise_right_shift(mant, 44) + 512 * neg + 1024 * (e.to(torch.int64) + 1100)
        rows = torch.stack([s0, s1, s2], dim=1).to(positions.dtype)
        forces = torch.zeros_like(positions).index_copy(0, self.slot_index, rows)
        return torch.zeros((), dtype=positions.dtype, device=positions.device), forces


def _covering_rows(grid_min: List[float], grid_max: List[float], bins: List[int], zbins: List[int],
                   nb: int) -> List[List[int]]:
    """Per lambda bin (flat, row-major), the accumulator rows (``nb`` + flat xi bin) of the CZAR xi bins that overlap
    it, padded to equal length by repeating its first row (with a doubled count: only "any sample?" is asked)."""
    per_dim = []
    for a, b, n, nzb in zip(grid_min, grid_max, bins, zbins):
        w, wz = (b - a) / n, (b - a) / nzb
        first = [int(math.floor(j * w / wz + 1e-9)) for j in range(n)]
        end = [min(nzb, int(math.ceil((j + 1) * w / wz - 1e-9))) for j in range(n)]
        per_dim.append([list(range(a0, e0)) for a0, e0 in zip(first, end)])
    zstrides = [int(np.prod(zbins[i + 1:])) for i in range(len(zbins))]
    table = []
    for cell in np.ndindex(*bins):
        rows = [nb]
        for i, j in enumerate(cell):
            rows = [r + k * zstrides[i] for r in rows for k in per_dim[i][j]]
        table.append(rows)
    width = max(len(r) for r in table)
    return [r + [r[0]] * (width - len(r)) for r in table]


class _EABFCoreJacobian(_EABFCore):
    """CV route through the CV's closed-form ``value_and_jacobian`` (no autograd at all)."""

    def _step(self, positions: torch.Tensor, box: torch.Tensor, sample: torch.Tensor) -> Tuple[
            torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(energy, forces, xi, lambda, applied bias)."""
        # no_grad: buffer writes with grad mode on leak memory every call inside an OpenMM Context (openmm-torch
        # hands positions that require grad on some platforms)
        with torch.no_grad():
            xi, jac = self.cv.value_and_jacobian(positions, box)
            xi64 = xi.to(torch.float64)
            ext = positions.index_select(0, self.ext_index).to(torch.float64)
            f_lam, f_ext, e64, fbias = self._coupling(xi64, ext, sample)
            # atoms: -dE/dxi . dxi/dq = f_lam . J, one (1, d) x (d, 3 n_sel) product
            f_atoms = torch.matmul(f_lam, jac.to(torch.float64).reshape(self.d, -1)).view(-1, 3)
            forces = torch.zeros_like(positions, dtype=torch.float64).index_add_(
                0, self.force_index, torch.cat([f_atoms, f_ext]))
        return e64.to(positions.dtype), forces.to(positions.dtype), xi64, ext.select(1, 0), fbias

    def _xi(self, positions: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        xi, _ = self.cv.value_and_jacobian(positions, box)
        return xi.to(torch.float64)


class _EABFCoreCPUKernel(_EABFCoreJacobian):
    """The Jacobian route's step as one compiled op, ``torch.ops.aesample.eabf_step`` (:mod:`aesample.cpukernel`):
    the same arithmetic as :meth:`_EABFCoreJacobian._step` without TorchScript's per-op cost. Only for what
    :func:`aesample.cpukernel.supports` allows; the read-out and the smooth bias's refresh are the parent's."""

    def _kernel(self, positions: torch.Tensor, sample: torch.Tensor) -> Tuple[
            torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        f = self.cv.features  # the CV's own constants (cpukernel.supports checked their kind)
        return torch.ops.aesample.eabf_step(
            positions, sample, self.cv.atom_indices, f.horn_from_x_t, f.rot_map, f.reference, f.ref_cross,
            f.cross_map_t, self.cv.w1_centred, self.cv.weights, self.cv.biases, self.ext_index, self.force_index,
            self.neg_kappa, self.bin_origin, self.inv_width, self.bin_last, self.strides, self.row_offset, self.acc,
            self.last, self.n_samples, self.shared, self.zrows_of_bin, self.ramp_scale, self.ramp_shift,
            self.full_samples, self.step_ramp, self.pot, self.pot_cover, self.cell_origin, self.cell_inv_width,
            self.cell_last, self.cell_strides, self.corner, self.restr_lo, self.restr_hi, self.neg_restr_k,
            self.has_shared, self.gate_unreached, self.smooth, self.smooth_interval)

    def _step(self, positions: torch.Tensor, box: torch.Tensor, sample: torch.Tensor) -> Tuple[
            torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(energy, forces, xi, lambda, applied bias)."""
        with torch.no_grad():
            e, f, xi, lam, fbias, refresh = self._kernel(positions, sample)
            if self.smooth and refresh:
                # the potential from the sums including this sample, then the bias from it (no second sample)
                self._refresh()
                e, f, xi, lam, fbias, refresh = self._kernel(positions, torch.zeros_like(sample))
        return e, f, xi, lam, fbias


class _EABFCoreAutograd(_EABFCore):
    """CV route through one autograd vector-Jacobian product (CVs without ``value_and_jacobian``)."""

    def _step(self, positions: torch.Tensor, box: torch.Tensor, sample: torch.Tensor) -> Tuple[
            torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(energy, forces, xi, lambda, applied bias)."""
        # (a separate method: TorchScript fails on with-blocks after an early return)
        pos = positions.detach().requires_grad_(True)
        xi = self.cv(pos, box)
        with torch.no_grad():  # buffer writes with grad mode on leak memory inside an OpenMM Context
            xi64 = xi.detach().to(torch.float64)
            ext = positions.index_select(0, self.ext_index).to(torch.float64)
            f_lam, f_ext, e64, fbias = self._coupling(xi64, ext, sample)
        gout: List[Optional[torch.Tensor]] = [f_lam.to(xi.dtype)]
        grads = torch.autograd.grad([xi], [pos], grad_outputs=gout, allow_unused=True)
        g = grads[0]
        if g is None:
            g = torch.zeros_like(positions)
        with torch.no_grad():
            forces = g.to(torch.float64).index_add(0, self.ext_index, f_ext)
        return e64.to(positions.dtype), forces.to(positions.dtype), xi64, ext.select(1, 0), fbias

    def _xi(self, positions: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        return self.cv(positions, box).to(torch.float64)


class _EABFForceNonPeriodic(torch.nn.Module):
    def __init__(self, core: torch.nn.Module):
        super().__init__()
        self.core = core
        self.zero_box = torch.zeros(3, 3, dtype=torch.float64)

    def forward(self, positions: torch.Tensor, sample: torch.Tensor, readout: torch.Tensor, chunk: torch.Tensor):
        # The zero box stays on the host (a plain attribute, not a buffer, so .to(device) leaves it there): CVs can
        # see "not periodic" without a device synchronisation.
        return self.core.compute(positions, self.zero_box, sample, readout, chunk)


class _EABFForcePeriodic(torch.nn.Module):
    def __init__(self, core: torch.nn.Module):
        super().__init__()
        self.core = core

    def forward(
        self, positions: torch.Tensor, box: torch.Tensor, sample: torch.Tensor, readout: torch.Tensor,
        chunk: torch.Tensor,
    ):
        return self.core.compute(positions, box, sample, readout, chunk)


# ----------------------------------------------------------------------------------------------------------
# state container
# ----------------------------------------------------------------------------------------------------------
@dataclass
class EABFState:
    """Host copy of the eABF accumulators plus the grid they live on.

    ``count`` and ``grad`` live on the ABF lambda grid of shape ``bins``; ``zcount`` and ``czar`` on the CZAR xi
    grid of shape ``zbins`` (same range, usually finer: the CZAR estimate needs bins near the coupling width
    ``sqrt(kT/kappa)``, the bias fills faster on coarse bins). C order, first CV component slowest; ``grad`` and
    ``czar`` add a last axis of length d. ``grad`` holds per-lambda-bin sums of ``kappa (lambda - xi)``, ``count``
    the samples; ``czar`` the per-xi-bin sums of ``kappa (lambda - xi)``, ``zcount`` the xi histogram. Units:
    kJ/mol/(CV unit). ``meta`` carries strings such as ``temperature`` (K) and ``czar_min_count``.
    ``bias_potential`` (shape ``bins``, kJ/mol; smooth bias only) is the potential the force applied when the state
    was read, and ``bias_potential_cover`` (shape ``bins``) each bin's cover then (1 where the bin or a neighbour
    had the full bias; the share of the potential in the applied bias around it), so that a force rebuilt from the
    state applies the same bias; sums of states have neither. ``bias_potential_shared_samples`` counts the samples
    of the other walkers' sums (``ExtendedABF`` ``sharedState``) the potential was integrated with, 0 without: a
    force rebuilt with other sums integrates its potential afresh instead of applying a stale one.
    ``bias_solver`` (graph-safe forces only) is the state of the solve for the next potential (``_EABFCore``).
    """

    grid_min: np.ndarray
    grid_max: np.ndarray
    bins: np.ndarray
    periodic: np.ndarray
    kappa: np.ndarray
    count: np.ndarray
    grad: np.ndarray
    zcount: np.ndarray
    czar: np.ndarray
    last: np.ndarray
    n_samples: int = 0
    meta: Dict[str, str] = field(default_factory=dict)
    zbins: Optional[np.ndarray] = None
    bias_potential: Optional[np.ndarray] = None
    bias_potential_cover: Optional[np.ndarray] = None
    bias_potential_shared_samples: Optional[float] = None
    bias_solver: Optional[np.ndarray] = None

    def __post_init__(self):
        if self.zbins is None:  # states written before the CZAR grid had its own resolution
            self.zbins = np.asarray(self.zcount).shape if np.ndim(self.zcount) == self.d else self.bins
        self.zbins = np.asarray(self.zbins, dtype=np.int64).reshape(-1)

    @property
    def d(self) -> int:
        return int(len(self.bins))

    @property
    def bin_width(self) -> np.ndarray:
        """Width of the ABF (lambda) bins per component, CV units."""
        return (np.asarray(self.grid_max) - np.asarray(self.grid_min)) / np.asarray(self.bins)

    @property
    def z_bin_width(self) -> np.ndarray:
        """Width of the CZAR (xi) bins per component, CV units."""
        return (np.asarray(self.grid_max) - np.asarray(self.grid_min)) / np.asarray(self.zbins)

    def centers(self) -> List[np.ndarray]:
        """Centres of the ABF (lambda) bins along each component."""
        w = self.bin_width
        return [self.grid_min[i] + w[i] * (np.arange(self.bins[i]) + 0.5) for i in range(self.d)]

    def z_centers(self) -> List[np.ndarray]:
        """Centres of the CZAR (xi) bins along each component."""
        w = self.z_bin_width
        return [self.grid_min[i] + w[i] * (np.arange(self.zbins[i]) + 0.5) for i in range(self.d)]

    def save(self, path: Union[str, Path], compressed: bool = False) -> None:
        """Atomic save as ``.npz`` (``compressed``: zip-deflated, for the many mostly-empty block snapshots)."""
        from .io import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                (np.savez_compressed if compressed else np.savez)(
                    fh,
                    grid_min=self.grid_min, grid_max=self.grid_max, bins=self.bins, periodic=self.periodic,
                    kappa=self.kappa, count=self.count, grad=self.grad, zcount=self.zcount, czar=self.czar,
                    last=self.last, n_samples=np.array(self.n_samples), zbins=np.asarray(self.zbins),
                    meta_keys=np.array(list(self.meta.keys()), dtype=str),
                    meta_values=np.array(list(self.meta.values()), dtype=str),
                    **({} if self.bias_potential is None else {"bias_potential": np.asarray(self.bias_potential)}),
                    **({} if self.bias_potential_cover is None
                       else {"bias_potential_cover": np.asarray(self.bias_potential_cover)}),
                    **({} if self.bias_potential_shared_samples is None
                       else {"bias_potential_shared_samples": np.array(float(self.bias_potential_shared_samples))}),
                    **({} if self.bias_solver is None else {"bias_solver": np.asarray(self.bias_solver)}),
                )

    @classmethod
    def load(cls, path: Union[str, Path]) -> "EABFState":
        try:
            z = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise EABFError(f"cannot read eABF state file {path}: {exc}") from exc
        with z:
            meta = dict(zip([str(k) for k in z["meta_keys"]], [str(v) for v in z["meta_values"]]))
            return cls(
                grid_min=z["grid_min"], grid_max=z["grid_max"], bins=z["bins"], periodic=z["periodic"],
                kappa=z["kappa"], count=z["count"], grad=z["grad"], zcount=z["zcount"], czar=z["czar"],
                last=z["last"], n_samples=int(z["n_samples"]), meta=meta,
                zbins=z["zbins"] if "zbins" in z.files else None,
                bias_potential=z["bias_potential"] if "bias_potential" in z.files else None,
                bias_potential_cover=z["bias_potential_cover"] if "bias_potential_cover" in z.files else None,
                bias_potential_shared_samples=(float(z["bias_potential_shared_samples"])
                                               if "bias_potential_shared_samples" in z.files else None),
                bias_solver=z["bias_solver"] if "bias_solver" in z.files else None,
            )

    @classmethod
    def pooled(cls, states: Sequence["EABFState"]) -> "EABFState":
        """Accumulators of independent walkers summed into one state.

        Valid for both estimators: the walkers' biases act on lambda only, so their pooled samples follow one
        extended ensemble whose bias is a mixture of theirs, and the conditional averages that the naive and CZAR
        gradients take are those of the unbiased system. ``last`` and ``meta`` come from the first state.

        Raises
        ------
        EABFError
            If the states do not share grid, periodicity and kappa (walkers of different runs).
        """
        states = list(states)
        if not states:
            raise EABFError("EABFState.pooled: no states to pool")
        first = states[0]
        for i, st in enumerate(states[1:], start=1):
            for name in ("grid_min", "grid_max", "bins", "zbins", "periodic", "kappa"):
                a, b = np.asarray(getattr(first, name)), np.asarray(getattr(st, name))
                if a.shape != b.shape or not np.allclose(a, b):
                    raise EABFError(f"EABFState.pooled: state {i} has {name} {b.tolist()}, state 0 has {a.tolist()}")
        return cls.weighted_sum([(1, st) for st in states])

    @classmethod
    def weighted_sum(cls, parts: Sequence[Tuple[float, "EABFState"]]) -> "EABFState":
        """``sum_i c_i state_i`` of the accumulators (``parts``: (c_i, state_i); grid, ``last`` and ``meta`` of the
        first, no checks): pooled walkers (all c = 1), a block's own accumulators (c = 1, -1 for two cumulative
        snapshots), bootstrap replicates (c = block weights)."""
        first = parts[0][1]

        def total(name):
            return sum(c * getattr(st, name) for c, st in parts)

        return cls(
            grid_min=first.grid_min, grid_max=first.grid_max, bins=first.bins, periodic=first.periodic,
            kappa=first.kappa, count=total("count"), grad=total("grad"), zcount=total("zcount"), czar=total("czar"),
            last=first.last, n_samples=int(round(sum(c * st.n_samples for c, st in parts))), meta=dict(first.meta),
            zbins=first.zbins,
        )

    def _temperature(self, temperature: Optional[float]) -> float:
        if temperature is None:
            if "temperature" not in self.meta:
                raise EABFError("EABFState: no temperature given and none recorded in the state's meta")
            return float(self.meta["temperature"])
        return float(temperature)

    def _min_count(self, min_count: Optional[int]) -> int:
        return int(self.meta.get("czar_min_count", 1)) if min_count is None else int(min_count)

    def naive_gradient(self) -> np.ndarray:
        """Naive eABF estimate of dF_kappa/dlambda per lambda bin (NaN where empty)."""
        from .estimators import naive_gradient

        return naive_gradient(self.grad, self.count)

    def naive_free_energy(self) -> np.ndarray:
        """F_kappa(lambda) on the ABF grid (kJ/mol, min 0): the naive gradient integrated with count weights."""
        from .estimators import integrate_gradient

        return integrate_gradient(self.naive_gradient(), self.bin_width, self.periodic, counts=self.count)

    def czar_gradient(self, temperature: Optional[float] = None, min_count: Optional[int] = None) -> np.ndarray:
        """CZAR estimate of dA/dz per xi bin (kJ/mol/CV unit, NaN where undefined).

        ``temperature`` (K) and ``min_count`` (bins with fewer samples give no estimate) default to the values
        recorded in ``meta`` (``temperature``, ``czar_min_count``; 1 when absent).
        """
        from .estimators import czar_gradient

        return czar_gradient(self.czar, self.zcount, self.z_bin_width, self._temperature(temperature),
                             self.periodic, min_count=self._min_count(min_count))

    def czar_free_energy(self, temperature: Optional[float] = None, min_count: Optional[int] = None) -> np.ndarray:
        """A(xi) on the CZAR grid (kJ/mol, min 0; NaN where not estimated): CZAR's identity between neighbouring
        bins, solved by count-weighted least squares (:func:`aesample.estimators.czar_free_energy`)."""
        from .estimators import czar_free_energy

        return czar_free_energy(self.czar, self.zcount, self.z_bin_width, self._temperature(temperature),
                                self.periodic, min_count=self._min_count(min_count))


# ----------------------------------------------------------------------------------------------------------
# the OpenMM-facing object
# ----------------------------------------------------------------------------------------------------------
def _extend_neck_tables(f) -> int:
    """Add one radius index (returned) with zero neck strength to a GBn2 CustomGBForce's getm0/getd0 tables."""
    import openmm

    tables = {f.getTabulatedFunctionName(i): f.getTabulatedFunction(i) for i in range(f.getNumTabulatedFunctions())}
    if "getm0" not in tables or "getd0" not in tables:
        raise EABFError("ExtendedABF: CustomGBForce without getm0/getd0 neck tables is not a supported GBn2 force")
    n = None
    for key, fill in (("getm0", 0.0), ("getd0", 1.0)):
        fn = tables[key]
        if not isinstance(fn, openmm.Discrete2DFunction):
            raise EABFError(f"ExtendedABF: unexpected {key} table type {type(fn).__name__} in CustomGBForce")
        nx, ny, vals = fn.getFunctionParameters()
        if nx != ny:
            raise EABFError(f"ExtendedABF: non-square {key} table ({nx} x {ny}) in CustomGBForce")
        new = [fill] * ((nx + 1) * (nx + 1))
        for j in range(nx):
            for i in range(nx):
                new[i + (nx + 1) * j] = vals[i + nx * j]
        fn.setFunctionParameters(nx + 1, nx + 1, new)
        n = nx
    return int(n)


def _check_supported_forces(system) -> None:
    """Refuse, before touching the System, per-particle forces that cannot get a non-interacting particle."""
    import openmm

    for i in range(system.getNumForces()):
        f = system.getForce(i)
        name = type(f).__name__
        if isinstance(f, openmm.GBSAOBCForce):
            raise EABFError("ExtendedABF: GBSAOBCForce is not supported (an added particle would feel and exert "
                            "surface-area forces); use implicit/gbn2.xml (CustomGBForce) instead")
        if isinstance(f, openmm.CustomGBForce):
            names = {f.getPerParticleParameterName(k) for k in range(f.getNumPerParticleParameters())}
            fnames = {f.getTabulatedFunctionName(k) for k in range(f.getNumTabulatedFunctions())}
            if names != {"charge", "or", "sr", "alpha", "beta", "gamma", "radindex"} or not {"getm0", "getd0"} <= fnames:
                raise EABFError(
                    f"ExtendedABF: CustomGBForce with per-particle parameters {sorted(names)} is not supported; the "
                    "GBn2 model (implicit/gbn2.xml) is: its added particles are made exactly non-interacting")
        if name.startswith(("Amoeba", "Hippo")) or name == "DrudeForce":
            raise EABFError(f"ExtendedABF: {name} is not supported (cannot add non-interacting particles to it)")


def _zero_interaction_entries(system, n_old: int, d: int) -> None:
    """Give the new particles n_old..n_old+d-1 non-interacting entries in every per-particle force."""
    import openmm

    for i in range(system.getNumForces()):
        f = system.getForce(i)
        name = type(f).__name__
        if isinstance(f, openmm.NonbondedForce):
            for _ in range(d):
                f.addParticle(0.0, 0.1, 0.0)
            for a in range(n_old, n_old + d):  # keep 0*inf out of the ext-ext pairs
                for b in range(a + 1, n_old + d):
                    f.addException(a, b, 0.0, 0.1, 0.0)
        elif isinstance(f, openmm.GBSAOBCForce):
            # An uncharged particle still gets a Born radius from its neighbours and an ACE surface term that
            # depends on their positions: spurious forces. Not supported until handled exactly.
            raise EABFError("ExtendedABF: GBSAOBCForce is not supported (an added particle would feel and exert "
                            "surface-area forces); use implicit/gbn2.xml (CustomGBForce) instead")
        elif isinstance(f, openmm.CustomNonbondedForce):
            npar = f.getNumPerParticleParameters()
            for k in range(d):
                p = f.addParticle([0.0] * npar)
                if f.getNumInteractionGroups() == 0:
                    for j in range(p):  # exclusions make the extended particle invisible
                        f.addExclusion(j, p)
        elif isinstance(f, openmm.CustomGBForce):
            names = [f.getPerParticleParameterName(k) for k in range(f.getNumPerParticleParameters())]
            known = {"charge", "or", "sr", "alpha", "beta", "gamma", "radindex"}
            if not {"charge", "or", "sr", "alpha", "beta", "gamma"} <= set(names) or not set(names) <= known:
                raise EABFError(
                    f"ExtendedABF: CustomGBForce with per-particle parameters {names} is not supported; the GBn2 "
                    "model (implicit/gbn2.xml) is: its added particles are made exactly non-interacting")
            # GBn2 (OpenMM's customgbforces): charge 0; scaled radius 0 -> no Ivdw descreening of others;
            # alpha = beta = gamma = 0 -> the particle's own Born radius is the constant 'or' (> 0, so pair terms
            # stay finite) and its surface term a constant (~5.6 kJ/mol); a new radius index whose neck-table
            # entries (getm0) are 0 -> no neck term in either direction.
            n_radii = _extend_neck_tables(f)
            vals = {"charge": 0.0, "or": 0.1, "sr": 0.0, "alpha": 0.0, "beta": 0.0, "gamma": 0.0,
                    "radindex": float(n_radii)}
            for _ in range(d):
                f.addParticle([vals[n] for n in names])
        elif name.startswith(("Amoeba", "Hippo")) or name in ("DrudeForce",):
            raise EABFError(f"ExtendedABF: {name} is not supported (cannot add non-interacting particles to it)")


def _free_force_group(system) -> int:
    """The highest force group no force of ``system`` uses (the choice of ``app.Metadynamics``)."""
    free = set(range(32)) - {system.getForce(i).getForceGroup() for i in range(system.getNumForces())}
    if not free:
        raise EABFError("every force group 0..31 of the System is in use; the eABF force needs one of its own "
                        "(pass forceGroup= after freeing one)")
    return max(free)


def _context_of(target):
    """The ``openmm.Context`` of a Simulation, or ``target`` itself when it is a Context."""
    return getattr(target, "context", target)


def _jacobian_route(cv, positions, box, d: int, want: Optional[bool]) -> bool:
    """Whether the eABF force can use ``cv.value_and_jacobian`` (checked against autograd on ``positions``)."""
    if want is False:
        return False
    reason = None
    if not (hasattr(cv, "value_and_jacobian") and hasattr(cv, "atom_indices")):
        reason = "the CV has no value_and_jacobian method (or no atom_indices)"
    else:
        pos = torch.as_tensor(np.asarray(positions, dtype=np.float64))
        b = torch.zeros(3, 3, dtype=torch.float64) if box is None else torch.as_tensor(
            np.asarray(_strip(box, "nm"), dtype=np.float64))
        try:
            with torch.no_grad():
                xi_j, jac = cv.value_and_jacobian(pos, b)
            n_sel = int(cv.atom_indices.numel())
            if tuple(xi_j.shape) != (d,) or tuple(jac.shape) != (d, n_sel, 3):
                reason = (f"value_and_jacobian returned shapes {tuple(xi_j.shape)}, {tuple(jac.shape)}; expected "
                          f"({d},), ({d}, {n_sel}, 3)")
            else:
                p = pos.clone().requires_grad_(True)
                xi = cv(p, b)
                full = torch.zeros(d, pos.shape[0], 3, dtype=torch.float64)
                full[:, cv.atom_indices.reshape(-1)] = jac.to(torch.float64)
                for k in range(d):
                    (g,) = torch.autograd.grad(xi[k], p, retain_graph=True, allow_unused=True)
                    g = torch.zeros_like(pos) if g is None else g
                    scale = float(g.abs().max()) + 1e-12
                    if float((g - full[k]).abs().max()) > 1e-6 * scale or not torch.allclose(
                            xi.detach().to(torch.float64)[k], xi_j.to(torch.float64)[k], rtol=1e-9, atol=1e-9):
                        reason = f"value_and_jacobian disagrees with autograd for component {k}"
                        break
        except Exception as exc:  # e.g. an exported CV whose alignment method has no closed form
            reason = f"value_and_jacobian failed: {exc}"
    if reason is not None and want:
        raise EABFError(f"cvJacobian=True but {reason}")
    return reason is None


class ExtendedABF:
    """Extended-system ABF on a TorchScript CV, as an OpenMM System modifier (like ``app.Metadynamics``).

    Construct it on the System *before* creating the Context/Simulation, then give the Context positions for
    ``N + d`` particles (:meth:`extendPositions`).

    Parameters
    ----------
    system : openmm.System
        Modified in place: ``d`` particles and one TorchForce are added.
    cv : torch.nn.Module or ScriptModule
        CV following the contract, returning ``(d,)``, d in 1..3.
    gridMin, gridMax : float or sequence (CV units)
        Grid bounds per component. Periodic components need ``gridMax - gridMin == 2*pi``.
    bins : int or sequence of int
        Bins per component (> 0) of the ABF grid on lambda (where the bias is accumulated and applied).
    kappa : float or sequence (kJ/mol/CV unit^2, Quantity accepted)
        Coupling spring constants (> 0).
    periodic : bool or sequence, optional
        Periodicity per component; default: the CV's ``periodic`` attribute.
    extendedMass : float or sequence (amu nm^2/CV unit^2), optional
        Mass of the lambda particles; default from ``extendedPeriod``: ``kappa (period / 2 pi)^2``.
    extendedPeriod : float or Quantity (ps)
        Period of the lambda oscillator when ``extendedMass`` is not given (default: the configuration's
        ``eabf.extended_period``, 0.2 ps).
    fullSamples : int
        Samples per bin at which the full bias applies (default: the configuration's ``eabf.full_samples``, 100).
    minSamples : int, optional
        Samples below which no bias applies (default ``fullSamples // 2``). Linear ramp in between.
    wallKappa : float or sequence, optional
        Spring constant of the walls keeping lambda on the grid (default ``10 * kappa``).
    forceGroup : int, optional
        Force group of the eABF TorchForce; no other force may use it (read-out relies on it). Default: the
        highest group no force of ``system`` uses, as ``app.Metadynamics`` picks its own.
    positions : array (N, 3) nm, optional
        Configuration used to validate the CV output (default: a random compact configuration).
    box : array (3, 3) nm, optional
        Box for that validation.
    initialState : EABFState or path, optional
        Accumulators to start from (restart); grid must match.
    sharedState : EABFState or path, optional
        Shared-bias multiple walkers: the other walkers' accumulators (their lambda-grid ``count`` and ``grad``
        summed; same grid). The applied bias of a lambda bin is that of this walker's row plus theirs; this
        walker's own accumulators (:meth:`getState`) never include them. Fixed for the Context's lifetime: to apply
        newer sums, build a new force and Context (:mod:`aesample.sharedbias`).
    closePeriodicBias : bool
        Along a periodic component, apply the ABF gradient minus its ramp-weighted mean around the ring of lambda
        bins once every bin of that ring was visited, so the bias exerts no net torque around the ring (default: the
        configuration's ``eabf.close_periodic_bias``, True). The accumulators, and so the free energy
        estimates, are the same either way; only the applied bias changes.
    biasOnlyWhereReached : bool
        Apply the ABF bias of a lambda bin only once the CV itself has been there (a sample of xi in a CZAR bin
        overlapping it; with ``sharedState``, the other walkers' xi samples count too). Where xi cannot go (beyond
        the range of a bounded CV, e.g. a network with tanh layers), lambda's mean force is the spring's pull back
        towards xi; a bias cancelling it lets lambda run off and the spring tear the molecule apart. Default: the
        configuration's ``eabf.bias_only_where_reached``, True. No effect on grids whose components are all
        periodic.
    smoothBias : bool
        Apply the ABF bias as the gradient of a potential instead of the bin's mean force: the potential on the
        lambda-bin centres is the least-squares integral of the (ramped) per-bin means, refreshed every
        ``smoothBiasInterval`` samples inside the force, and the force on lambda is the gradient of its multilinear
        interpolant, so the bias is exactly conservative and continuous in lambda. The potential continues one bin
        beyond the sampled region with the slope of the last sampled bin (the binned bias also pushes up to the edge
        of its bin); in cells reaching further out the binned bias applies (zero where nothing was sampled), until
        the next refresh takes their bins in. In 2D and 3D a bias constant over each bin is not a gradient, and along
        learned CVs CZAR's free energy then comes out distorted (``benchmarks/static_bias_check.py``). The
        accumulators and estimators are the same either way. With ``useCUDAGraphs`` the refresh cannot be a branch:
        the samples between two refreshes solve for the next potential a few iterations at a time, so the
        potential is the one the ordinary force would apply, one ``smoothBiasInterval`` later (and each step costs
        a few dozen more operations). Default (None): the configuration's ``eabf.smooth_bias``, True.
    smoothBiasInterval : int
        Samples between refreshes of the smooth bias's potential (> 0). The potential is part of the state
        (:attr:`EABFState.bias_potential`, with its cover): a force rebuilt from a state read from this one applies
        the same bias; from a state without it (a sum of states), or with other ``sharedState`` sums than the
        force that wrote it applied (a shared-bias walker at an exchange), the potential is integrated afresh.
    parameterPrefix : str
        Prefix of the Context global parameters (``sample``, ``readout``, ``chunk``).
    useCUDAGraphs : bool
        Ask openmm-torch to capture the module in a CUDA graph (honoured by the CUDA platform only). The module is
        then built graph-safe: forces and read-out share one branch-free path with no host synchronisation (a few
        more operations per step, the same numbers).
    temperature : float or Quantity (K), optional
        Temperature of the simulation, used by :meth:`getFreeEnergy` when the integrator does not report one
        (e.g. a CustomIntegrator). Does not change the dynamics: the extended particles are thermostatted with
        the atoms by the integrator.
    czarBins : int or sequence of int, optional
        Bins per component of the CZAR grid on xi (same range as the ABF grid; default: ``bins``). Finer than the
        ABF grid, near the coupling width ``sqrt(kT / kappa)``, it resolves a free energy that varies on that scale
        while the coarse ABF grid keeps filling fast.
    cvJacobian : bool, optional
        How the force gets dxi/dq. None (default): the CV's closed-form ``value_and_jacobian`` when it has one and
        it agrees with autograd at the validation configuration, else one autograd vector-Jacobian product.
        True: require the closed form (error if unavailable); False: always autograd. The physics is the same;
        the closed form saves the autograd backward pass (see ``benchmarks/EABF_RESULTS.md``).
    cpuKernel : bool or None
        Compute each step with the compiled CPU op of :mod:`aesample.cpukernel` instead of the TorchScript step
        (same results to ~1e-12; a fraction of the cost on a CPU). For the CPU and Reference platforms only, and
        what :func:`aesample.cpukernel.supports` allows (the loop's learned CVs without a periodic box). True:
        required (error otherwise); None: where it can be used; False (default): never. Runs choose with
        ``eabf.cpu_kernel``. ``cpuKernel`` then says whether it is used, ``cpuKernelNote`` why.
    """

    def __init__(
        self,
        system,
        cv,
        gridMin,
        gridMax,
        bins,
        kappa,
        periodic=None,
        extendedMass=None,
        extendedPeriod=_DEFAULTS.extended_period,
        fullSamples: int = _DEFAULTS.full_samples,
        minSamples: Optional[int] = None,
        wallKappa=None,
        forceGroup: Optional[int] = None,
        positions=None,
        box=None,
        initialState: Optional[Union[EABFState, str, Path]] = None,
        parameterPrefix: str = "aesample_",
        useCUDAGraphs: bool = False,
        cvJacobian: Optional[bool] = None,
        czarBins=None,
        temperature=None,
        sharedState: Optional[Union[EABFState, str, Path]] = None,
        closePeriodicBias: bool = _DEFAULTS.close_periodic_bias,
        biasOnlyWhereReached: bool = _DEFAULTS.bias_only_where_reached,
        smoothBias: Optional[bool] = None,
        smoothBiasInterval: int = _DEFAULTS.smooth_bias_interval,
        cpuKernel: Optional[bool] = False,
    ):
        import openmm

        if not isinstance(system, openmm.System):
            raise TypeError(f"system must be an openmm.System, got {type(system).__name__}")
        if not isinstance(cv, torch.nn.Module):
            raise TypeError(f"cv must be a torch.nn.Module / ScriptModule, got {type(cv).__name__}")
        cv = _cvs.script_cv(cv)
        n_old = system.getNumParticles()
        if positions is None:
            rng = np.random.default_rng(12345)
            positions = rng.normal(0.0, 0.3, size=(n_old, 3))
        else:
            positions = np.asarray(_strip(positions, "nm"), dtype=np.float64)
            if positions.shape != (n_old, 3):
                raise EABFError(f"positions must have shape ({n_old}, 3) for this System, got {positions.shape}")
        xi0 = _cvs.check_cv(cv, positions, box, name="cv")
        d = int(xi0.shape[0])
        self.d = d

        gmin = _per_dim(gridMin, d, "gridMin")
        gmax = _per_dim(gridMax, d, "gridMax")
        for i in range(d):
            if not gmin[i] < gmax[i]:
                raise EABFError(f"gridMin must be < gridMax for every component; component {i}: "
                                f"gridMin={gmin[i]}, gridMax={gmax[i]}")
        nbins = _per_dim(bins, d, "bins", cast=lambda v: v)
        for i, b in enumerate(nbins):
            if int(b) != b or int(b) <= 0:
                raise EABFError(f"bins must be positive integers; component {i}: bins={b}")
        nbins = [int(b) for b in nbins]
        zbins = nbins if czarBins is None else _per_dim(czarBins, d, "czarBins", cast=lambda v: v)
        for i, b in enumerate(zbins):
            if int(b) != b or int(b) <= 0:
                raise EABFError(f"czarBins must be positive integers; component {i}: czarBins={b}")
        zbins = [int(b) for b in zbins]
        kap = _per_dim(kappa, d, "kappa")
        for i, k in enumerate(kap):
            if not (k > 0 and math.isfinite(k)):
                raise EABFError(f"kappa must be > 0 (kJ/mol/CV unit^2); component {i}: kappa={k}")
        if periodic is None:
            periodic = list(getattr(cv, "periodic", [False] * d))
        per = _per_dim(periodic, d, "periodic", cast=bool)
        for i in range(d):
            if per[i] and abs((gmax[i] - gmin[i]) - TWO_PI) > 1e-6:
                raise EABFError(f"periodic component {i} needs gridMax - gridMin = 2*pi, got "
                                f"gridMin={gmin[i]}, gridMax={gmax[i]}")
        if extendedMass is None:
            period = float(_strip(extendedPeriod, "ps"))
            if not period > 0:
                raise EABFError(f"extendedPeriod must be > 0 ps, got {period}")
            mass = [k * (period / TWO_PI) ** 2 for k in kap]
        else:
            mass = _per_dim(_strip(extendedMass, "amu"), d, "extendedMass")
        for i, m in enumerate(mass):
            if not m > 0:
                raise EABFError(f"extendedMass must be > 0; component {i}: {m}")
        fullSamples = int(fullSamples)
        if fullSamples < 0:
            raise EABFError(f"fullSamples must be >= 0, got {fullSamples}")
        minSamples = fullSamples // 2 if minSamples is None else int(minSamples)
        if not 0 <= minSamples <= fullSamples:
            raise EABFError(f"minSamples must be in 0..fullSamples={fullSamples}, got {minSamples}")
        wk = [10.0 * k for k in kap] if wallKappa is None else _per_dim(wallKappa, d, "wallKappa")
        if smoothBias is None:
            smoothBias = bool(_DEFAULTS.smooth_bias)
        if smoothBias:
            if int(smoothBiasInterval) != smoothBiasInterval or int(smoothBiasInterval) < 1:
                raise EABFError(f"smoothBiasInterval must be a positive integer (samples), got {smoothBiasInterval}")
        if forceGroup is None:
            forceGroup = _free_force_group(system)
        forceGroup = int(forceGroup)
        if not 0 <= forceGroup <= 31:
            raise EABFError(f"forceGroup must be in 0..31, got {forceGroup}")
        for i in range(system.getNumForces()):
            if system.getForce(i).getForceGroup() == forceGroup:
                raise EABFError(f"forceGroup={forceGroup} is already used by {type(system.getForce(i)).__name__} "
                                f"(force {i}); the eABF force needs a group of its own")
        state = None
        if initialState is not None:
            state = initialState if isinstance(initialState, EABFState) else EABFState.load(initialState)
            ok = (
                state.d == d and np.array_equal(np.asarray(state.bins), nbins)
                and np.array_equal(np.asarray(state.zbins), zbins)
                and np.allclose(state.grid_min, gmin) and np.allclose(state.grid_max, gmax)
            )
            if not ok:
                raise EABFError(
                    f"initialState grid (min={list(state.grid_min)}, max={list(state.grid_max)}, bins="
                    f"{list(state.bins)}, czarBins={list(state.zbins)}) does not match gridMin={gmin}, "
                    f"gridMax={gmax}, bins={nbins}, czarBins={zbins}"
                )

        shared = None
        if sharedState is not None:
            shared = sharedState if isinstance(sharedState, EABFState) else EABFState.load(sharedState)
            if not (shared.d == d and np.array_equal(np.asarray(shared.bins), nbins)
                    and np.array_equal(np.asarray(shared.zbins), zbins)
                    and np.allclose(shared.grid_min, gmin) and np.allclose(shared.grid_max, gmax)):
                raise EABFError(f"sharedState grid (min={list(shared.grid_min)}, max={list(shared.grid_max)}, bins="
                                f"{list(shared.bins)}, czarBins={list(shared.zbins)}) does not match gridMin={gmin}, "
                                f"gridMax={gmax}, bins={nbins}, czarBins={zbins}")

        use_jac = _jacobian_route(cv, positions, box, d, cvJacobian)  # before touching the System

        self.system = system
        self.cv = cv
        self.usesCVJacobian = use_jac
        self.gridMin = np.array(gmin)
        self.gridMax = np.array(gmax)
        self.bins = np.array(nbins)
        self.czarBins = np.array(zbins)
        self.kappa = np.array(kap)
        self.periodic = np.array(per, dtype=bool)
        self.extendedMass = np.array(mass)
        self.fullSamples = fullSamples
        self.minSamples = minSamples
        self.wallKappa = np.array(wk)
        self.forceGroup = forceGroup
        self.closePeriodicBias = bool(closePeriodicBias)
        self.biasOnlyWhereReached = bool(biasOnlyWhereReached)
        self.smoothBias = bool(smoothBias)
        self.smoothBiasInterval = int(smoothBiasInterval)
        self.temperature = None if temperature is None else float(_strip(temperature, "K"))
        self._lastState: Optional[EABFState] = None
        self._lastTemperature: Optional[float] = None
        self.prefix = parameterPrefix
        self.sampleParameter = parameterPrefix + "sample"
        self.readoutParameter = parameterPrefix + "readout"
        self.chunkParameter = parameterPrefix + "chunk"
        self.n_molecule = n_old

        # -- extended particles --
        _check_supported_forces(system)
        self.extendedIndices = [system.addParticle(m) for m in mass]
        _zero_interaction_entries(system, n_old, d)
        n_total = system.getNumParticles()
        self.slotIndices = [i for i in range(n_total) if not system.isVirtualSite(i)]
        # distinct pin centres (z = 0.5 nm * i) so extended particles never coincide
        self._pin_centres = np.array([[0.0, 0.5 * i] for i in range(d)])
        pin = list(kap)  # same period as the lambda oscillator (masses equal): stable with the same timestep
        core_cls = _EABFCoreJacobian if use_jac else _EABFCoreAutograd
        self.cpuKernel, self.cpuKernelNote = False, "TorchScript eABF step (cpuKernel=False)"
        if cpuKernel is None or cpuKernel:
            from . import cpukernel

            boxed = box is not None or system.usesPeriodicBoundaryConditions()
            ok, why = cpukernel.supports(cv, per, True if boxed else None, bool(useCUDAGraphs), use_jac)
            if ok:
                ok, why = cpukernel.load()
                why = why and f"it did not build: {why}"
            if cpuKernel and not ok:
                raise EABFError(f"cpuKernel=True, but the compiled CPU step cannot be used: {why}")
            self.cpuKernel = ok
            self.cpuKernelNote = "compiled CPU eABF step" if ok else f"TorchScript eABF step ({why})"
        if self.cpuKernel:
            core_cls = _EABFCoreCPUKernel
        self._core = core_cls(
            cv, n_total, self.extendedIndices, kap, pin, self._pin_centres.tolist(), gmin, gmax, nbins, per, fullSamples, minSamples, wk,
            self.slotIndices, state, zbins, graph_safe=bool(useCUDAGraphs), shared=shared,
            close_rings=bool(closePeriodicBias), gate_unreached=bool(biasOnlyWhereReached),
            smooth=bool(smoothBias), smooth_interval=int(smoothBiasInterval),
        )
        self.usesPeriodic = bool(system.usesPeriodicBoundaryConditions())
        wrapper = _EABFForcePeriodic(self._core) if self.usesPeriodic else _EABFForceNonPeriodic(self._core)
        self.module = torch.jit.script(wrapper)
        self.force = make_torch_force(
            self.module,
            global_parameters=[(self.sampleParameter, 1.0), (self.readoutParameter, 0.0), (self.chunkParameter, 0.0)],
            periodic=self.usesPeriodic,
            force_group=forceGroup,
            use_cuda_graphs=useCUDAGraphs,
            name="aesample eABF",
        )
        self.forceIndex = system.addForce(self.force)
        self._layout, self._flat_len = readout_layout(d, int(np.prod(nbins)), int(np.prod(zbins)), bool(smoothBias),
                                                      self._core.solver_len)

    # ---------------------------------------------------------------- positions
    def extendPositions(self, positions, box=None) -> np.ndarray:
        """Molecule positions (N, 3) nm -> positions for the extended System (N + d, 3): lambda starts at xi."""
        pos = np.asarray(_strip(positions, "nm"), dtype=np.float64)
        if pos.shape == (self.n_molecule + self.d, 3):
            pos = pos[: self.n_molecule]
        if pos.shape != (self.n_molecule, 3):
            raise EABFError(f"positions must have shape ({self.n_molecule}, 3), got {pos.shape}")
        xi = self.evaluateCV(pos, box)
        ext = np.zeros((self.d, 3))
        ext[:, 0] = self.wrap(xi)
        ext[:, 1:] = self._pin_centres
        return np.concatenate([pos, ext], axis=0)

    def evaluateCV(self, positions, box=None) -> np.ndarray:
        """xi (d,) of molecule (or full-System) positions, evaluated on the host."""
        pos = np.asarray(_strip(positions, "nm"), dtype=np.float64)
        b = torch.zeros(3, 3, dtype=torch.float64) if box is None else torch.as_tensor(
            np.asarray(_strip(box, "nm"), dtype=np.float64))
        with torch.no_grad():
            return self.cv(torch.as_tensor(pos), b).numpy().astype(np.float64)

    def wrap(self, values) -> np.ndarray:
        """Wrap periodic components into [gridMin, gridMax)."""
        v = np.array(values, dtype=np.float64, copy=True)
        span = self.gridMax - self.gridMin
        wrapped = self.gridMin + np.mod(v - self.gridMin, span)
        return np.where(self.periodic, wrapped, v)

    @property
    def moleculeAtoms(self) -> List[int]:
        """Indices of the System's own particles (without the extended ones): ``atomSubset`` of a DCDReporter."""
        return list(range(self.n_molecule))

    def getLambda(self, simulation) -> np.ndarray:
        """Current lambda (d,), periodic components wrapped (``simulation``: a Simulation or a Context)."""
        pos = _context_of(simulation).getState(getPositions=True).getPositions(asNumpy=True)._value
        return self.wrap(np.asarray(pos)[self.extendedIndices, 0])

    def getCollectiveVariables(self, simulation) -> np.ndarray:
        """Current xi (d,), computed on the host from the positions of ``simulation`` (a Simulation or a
        Context), like ``app.Metadynamics.getCollectiveVariables``; CV units."""
        st = _context_of(simulation).getState(getPositions=True)
        pos = np.asarray(st.getPositions(asNumpy=True)._value)
        box = np.asarray(st.getPeriodicBoxVectors(asNumpy=True)._value) if self.usesPeriodic else None
        return self.evaluateCV(pos, box)

    def getInstantaneous(self, context) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(xi, lambda, applied ABF bias force on lambda) at the current positions, from the device.

        Triggers one normal force evaluation of the eABF group (which samples the configuration if sampling is
        on and it was not sampled yet, exactly as the next step would) and one read-out.
        """
        context.getState(getForces=True, groups={self.forceGroup})
        info = self._read_range(context, 0, 3 * self.d)
        d = self.d
        return info[:d].copy(), self.wrap(info[d:2 * d]), info[2 * d:].copy()

    # ---------------------------------------------------------------- read-out
    def _read_range(self, context, start: int, length: int) -> np.ndarray:
        nslot = len(self.slotIndices)
        out = np.empty(length)
        old_r = context.getParameter(self.readoutParameter)
        old_c = context.getParameter(self.chunkParameter)
        context.setParameter(self.readoutParameter, 1.0)
        try:
            c0, c1 = start // nslot, (start + length - 1) // nslot
            buf = []
            for c in range(c0, c1 + 1):
                context.setParameter(self.chunkParameter, float(c))
                f = context.getState(getForces=True, groups={self.forceGroup}).getForces(asNumpy=True)._value
                buf.append(decode_readout(np.asarray(f)[self.slotIndices]))
            flat = np.concatenate(buf)
            off = start - c0 * nslot
            out[:] = flat[off: off + length]
        finally:
            context.setParameter(self.readoutParameter, old_r)
            context.setParameter(self.chunkParameter, old_c)
        return out

    def readFlat(self, context) -> np.ndarray:
        """The whole flattened accumulator vector (bit-exact copy of the device buffers)."""
        return self._read_range(context, 0, self._flat_len)

    def getState(self, context) -> EABFState:
        """Copy the device accumulators of ``context`` (a Context or a Simulation) into an :class:`EABFState`
        (adds no samples)."""
        flat = self.readFlat(_context_of(context))
        L = self._layout
        shape = tuple(int(b) for b in self.bins)
        zshape = tuple(int(b) for b in self.czarBins)
        d = self.d

        def part(key):
            a, n = L[key]
            return flat[a: a + n]

        nb = int(np.prod(shape))
        acc = part("acc").reshape(-1, 1 + d)  # rows: lambda bins, then xi bins; columns: count, gradient sum

        return EABFState(
            grid_min=self.gridMin.copy(), grid_max=self.gridMax.copy(), bins=self.bins.copy(),
            periodic=self.periodic.copy(), kappa=self.kappa.copy(),
            count=acc[:nb, 0].reshape(shape), grad=acc[:nb, 1:].reshape(shape + (d,)),
            zcount=acc[nb:, 0].reshape(zshape), czar=acc[nb:, 1:].reshape(zshape + (d,)),
            last=part("last").copy(), n_samples=int(round(part("n_samples")[0])), zbins=self.czarBins.copy(),
            bias_potential=part("pot").reshape(shape).copy() if self.smoothBias else None,
            bias_potential_cover=part("pot_cover").reshape(shape).copy() if self.smoothBias else None,
            bias_potential_shared_samples=self._core.shared_samples if self.smoothBias else None,
            bias_solver=part("solver").copy() if "solver" in L else None,
        )

    def step(self, simulation, steps: int) -> None:
        """Advance ``simulation`` by ``steps`` steps and keep a copy of the accumulators for :meth:`getFreeEnergy`.

        Unlike ``app.Metadynamics.step`` nothing needs to happen between steps (the bias lives in the Context);
        ``simulation.step(steps)`` alone is as good, followed by ``getFreeEnergy(simulation)``.
        """
        simulation.step(int(steps))
        self._lastState = self.getState(simulation.context)
        self._lastTemperature = self._temperature_of(simulation)

    def getFreeEnergy(self, simulation=None, estimator: str = "czar"):
        """Free energy along the CV (kJ/mol Quantity, array of the grid's shape; ``nan`` where never sampled).

        Parameters
        ----------
        simulation : app.Simulation or openmm.Context, optional
            Where to read the accumulators; default: the copy taken by the last :meth:`step`.
        estimator : {"czar", "naive"}
            ``"czar"``: the CZAR estimate A(xi) on the ``czarBins`` grid (needs the temperature: the integrator's,
            else ``temperature`` given to the constructor); ``"naive"``: the integrated eABF estimate
            F_kappa(lambda) on the ``bins`` grid.

        Bin centres: ``getState(simulation).z_centers()`` (CZAR) or ``.centers()`` (naive).
        """
        from openmm import unit

        if estimator not in ("czar", "naive"):
            raise EABFError(f"estimator must be 'czar' or 'naive', got {estimator!r}")
        if simulation is not None:
            state, temperature = self.getState(_context_of(simulation)), self._temperature_of(simulation)
        elif self._lastState is not None:
            state, temperature = self._lastState, self._lastTemperature
        else:
            raise EABFError("getFreeEnergy: no accumulators read yet; pass the Simulation or run step() first")
        if estimator == "naive":
            return state.naive_free_energy() * unit.kilojoule_per_mole
        if temperature is None:
            raise EABFError("getFreeEnergy: the integrator reports no temperature; give ExtendedABF(..., "
                            "temperature=...)")
        return state.czar_free_energy(temperature) * unit.kilojoule_per_mole

    def _temperature_of(self, simulation) -> Optional[float]:
        """The integrator's temperature (K) when it has one, else the constructor's ``temperature``."""
        context = _context_of(simulation)
        integrator = getattr(simulation, "integrator", None) or context.getIntegrator()
        if hasattr(integrator, "getTemperature"):
            return float(_strip(integrator.getTemperature(), "K"))
        return self.temperature

    def setSampling(self, context, on: bool) -> None:
        """Switch sampling on/off (e.g. off for minimisation/equilibration)."""
        context.setParameter(self.sampleParameter, 1.0 if on else 0.0)

    # ---------------------------------------------------------------- multiple time stepping
    def shortestPeriod(self) -> float:
        """Shortest oscillation period (ps) of the extended particles under the forces of the eABF group.

        Per component: the lambda oscillator ``2 pi sqrt(m / kappa)`` (the y/z pins have the same stiffness), and
        for non-periodic components lambda beyond the grid, where coupling and wall add up:
        ``2 pi sqrt(m / (kappa + wallKappa))``.
        """
        k = self.kappa + np.where(self.periodic, 0.0, self.wallKappa)
        return float(np.min(TWO_PI * np.sqrt(self.extendedMass / k)))

    def maxOuterTimestep(self) -> float:
        """Largest outer (eABF-group) time step (ps) accepted for multiple time stepping: ``shortestPeriod() / 10``.

        With multiple time stepping (BAOAB-RESPA) the eABF force (coupling, ABF bias, walls, pins) is applied as
        an impulse once per outer step, so the extended oscillator is integrated with the outer step. Ten steps
        per period keep it accurate (velocity Verlet is unstable beyond period / pi). The coupling also acts on
        the atoms through the CV; for stiff CVs (large ``kappa |dxi/dq|^2`` per atomic mass) check the CV side too.
        """
        return self.shortestPeriod() / 10.0

    def checkOuterTimestep(self, outer_timestep) -> None:
        """Raise :class:`EABFError` when ``outer_timestep`` (ps or Quantity) exceeds :meth:`maxOuterTimestep`."""
        dt = float(_strip(outer_timestep, "ps"))
        limit = self.maxOuterTimestep()
        if dt > limit * (1.0 + 1e-12):
            raise EABFError(
                f"outer time step {dt * 1000:.3g} fs for the eABF force group is too long for the extended system: "
                f"its shortest period is {self.shortestPeriod() * 1000:.3g} fs (lambda mass "
                f"{[round(float(m), 4) for m in self.extendedMass]}, kappa {[float(k) for k in self.kappa]}, "
                f"wallKappa {[float(k) for k in self.wallKappa]}) and the stability rule is outer step <= "
                f"period / 10 = {limit * 1000:.3g} fs. Use a smaller CV interval, a longer extendedPeriod, or a "
                "smaller wallKappa.")
