"""Checks on finished eABF walkers along a learned CV of alanine dipeptide (issue 14; no MD).

    python benchmarks/walker_checks.py WALKER_DIR [WALKER_DIR ...] [--time] [--unreached] [--links]

``--time``: Delta F(C7ax vs rest) at each block end (the accumulators of ``blocks/`` and the frames up to then),
and from the run's later parts alone (final minus earlier accumulators, later frames): does the walker converge,
and to what? ``--unreached``: the share of lambda samples in ABF cells where xi never had a sample (in any CZAR bin
overlapping the cell), from the final accumulators: where the ABF bias, unless gated
(``eabf.bias_only_where_reached``), only cancels the spring's pull back to xi. 2D grids whose CZAR bins refine the
ABF bins. ``--links``: Delta F with CZAR integrated from link differences, A_j - A_i = -kT ln(n_j / n_i)
+ h (F_i + F_j) / 2 (F = mean kappa (lambda - z) per bin; exact for a jump of A between neighbouring bins), beside
the package's centred-gradient estimate.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aesample import analysis  # noqa: E402
from aesample import estimators as est  # noqa: E402
from aesample.eabf import EABFState  # noqa: E402
from aesample.md import load_result  # noqa: E402
from aesample.systems import build_system  # noqa: E402

T = 300.0
KT = est.kT(T)


def delta_f(w: np.ndarray, lab: np.ndarray) -> float:
    pa, pb = w[lab == 0].sum(), w[lab == 1].sum()
    return float(-KT * np.log(pb / pa)) if pa > 0 and pb > 0 else float("nan")


def link_czar(st: EABFState) -> np.ndarray:
    """A on the CZAR grid from link differences (count-weighted least squares, as the package integrates)."""
    n = np.asarray(st.zcount, float)
    F = est.naive_gradient(st.czar, n)
    idx = np.arange(n.size).reshape(n.shape)
    I, J, B, W = [], [], [], []
    for k in range(n.ndim):
        if st.periodic[k]:
            ii, jj, ni, nj = idx, np.roll(idx, -1, k), n, np.roll(n, -1, k)
            fi, fj = F[..., k], np.roll(F[..., k], -1, k)
        else:
            lo = tuple(slice(0, n.shape[k] - 1) if a == k else slice(None) for a in range(n.ndim))
            hi = tuple(slice(1, n.shape[k]) if a == k else slice(None) for a in range(n.ndim))
            ii, jj, ni, nj, fi, fj = idx[lo], idx[hi], n[lo], n[hi], F[..., k][lo], F[..., k][hi]
        use = (ni > 0) & (nj > 0)
        I.append(ii[use])
        J.append(jj[use])
        B.append(-KT * np.log(nj[use] / ni[use]) + st.z_bin_width[k] * 0.5 * (fi[use] + fj[use]))
        W.append(ni[use] * nj[use] / (ni[use] + nj[use]))
    return est._solve_links(*(np.concatenate(x) for x in (I, J, B, W)), n.shape)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("walkers", nargs="+", type=Path)
    ap.add_argument("--time", action="store_true")
    ap.add_argument("--unreached", action="store_true")
    ap.add_argument("--links", action="store_true")
    a = ap.parse_args()
    top = build_system("alanine-dipeptide").mdtraj_topology
    for d in a.walkers:
        res = load_result(d)
        st = res.state
        if a.unreached:
            f = np.asarray(st.zbins) // np.asarray(st.bins)
            z = st.zcount.reshape(st.bins[0], f[0], st.bins[1], f[1]).sum(axis=(1, 3))
            un = (z == 0) & (st.count > 0)
            print(f"{d}: lambda samples in cells xi never reached {st.count[un].sum() / st.count.sum():.4f} "
                  f"({int(un.sum())} of {int((st.count > 0).sum())} cells)")
        if not (a.time or a.links):
            continue
        lab = analysis.c7ax_labels(analysis.phi_psi(res.load_trajectory(top))[:, 0])
        xi = res.colvar_xi()
        if a.links:
            for name, A in (("centred gradients", res.czar_pmf()[1]), ("link differences", link_czar(st))):
                w = est.czar_reweighting_weights(xi, A, st.zcount, st.grid_min, st.z_bin_width, T, st.periodic)
                print(f"{d}: Delta F {name} {delta_f(w, lab):.2f}")
        if a.time:
            ri = int(res.run.get("report_interval", 100))
            dt = float(res.run.get("timestep", 0.002))
            snaps = sorted((d / "blocks").glob("step_*.npz"))
            rows = []
            for f in snaps:
                m = min(len(xi), int(f.stem.split("_")[1]) // ri)
                w = res.reweighting_weights("czar", state=EABFState.load(f), xis=xi[:m])
                rows.append(f"{m * ri * dt / 1000:.2f}:{delta_f(w, lab[:m]):.2f}")
            print(f"{d}: cumulative (ns:Delta F) " + " ".join(rows))
            for f in snaps[3:-1:4]:
                m = min(len(xi), int(f.stem.split("_")[1]) // ri)
                later = EABFState.weighted_sum([(1.0, st), (-1.0, EABFState.load(f))])
                w = res.reweighting_weights("czar", state=later, xis=xi[m:])
                print(f"   after {m * ri * dt / 1000:.2f} ns: {delta_f(w, lab[m:]):.2f} (C7ax frames {lab[m:].mean():.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
