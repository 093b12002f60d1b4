"""Issue 14: why walkers along one fixed learned CV at kappa 3000 split into Delta F(C7ax vs rest) ~8 vs ~16 kJ/mol.

    OMP_NUM_THREADS=1 python benchmarks/kappa_split_analysis.py /work/runs14/kappa [--kappa 3000] [--seeds 11,12,13,14]

Reads the walkers written by kappa_walkers.py (KDIR/k{kappa}_s{seed}: COLVAR, traj, final accumulators; all
walkers k*_s* under KDIR are pooled only to label the CZAR xi bins by side). Truth from phi (C7ax side:
0 < phi < 2.3 rad). Prints, per walker and per pair (high <- low):

1. Delta F from the frames (the package's CZAR weights) and from the bins alone (log-sum-exp of exp(-beta A) over
   the xi bins of each side, sides from the pooled phi labels of all walkers): equal => the split is in A(xi),
   not in which frames sit in which bin; peptide-bond omegas (cis?) and the CB improper (chirality flips?).
2. Swap experiment: the high walker's CZAR gradient and counts replaced by a low walker's in one region of xi
   (the band within h bins of the C7ax/rest boundary in xi, the interiors, parts of the band; in the band one CZAR
   term at a time), re-integrated with the package's weighted least squares: where in xi the Delta F difference
   lives.
3. Frames in the boundary band: phi histogram (barrier frames or not), per part of the band.
4. Cutting the cross-boundary links whose bins hold no barrier frame (phi within 0.5 of 0 or in [1.6, 2.6]) in
   any walker, and a transition count between adjacent coarse (0.1) cells across the boundary.
"""
import argparse
import glob
import os

import mdtraj as md
import numpy as np
from scipy import ndimage

from aesample import analysis
from aesample import estimators as est
from aesample.estimators import _link_equations, _solve_links
from aesample.md import load_result
from aesample.systems import build_system

KT = est.kT(300.0)


def load(d, top):
    res = load_result(d)
    tr = res.load_trajectory(top)
    ang = analysis.phi_psi(tr)
    dih = md.compute_dihedrals(tr, np.array([[1, 4, 6, 8], [8, 14, 16, 18], [6, 14, 8, 10]]))
    st = res.state
    shp = tuple(int(b) for b in st.zbins)
    return dict(phi=ang[:, 0], psi=ang[:, 1], om1=dih[:, 0], om2=dih[:, 1], chi=dih[:, 2], xi=res.colvar_xi(),
                lam=res.colvar_lambda(), w=res.reweighting_weights("czar"), A=res.czar_pmf()[1],
                g=st.czar_gradient(300.0), n=np.asarray(st.zcount, float).reshape(shp), shp=shp,
                g0=np.asarray(st.grid_min, float), wd=np.asarray(st.z_bin_width, float))


def bins_of(r, xi=None):
    xi = r["xi"] if xi is None else xi
    return np.clip(np.floor((xi - r["g0"]) / r["wd"]).astype(int), 0, r["shp"][0] - 1)


def solve(g, n, wd, drop=None):
    """The package's count-weighted least squares (estimators.integrate_gradient) with links optionally dropped."""
    ri, rj, b, w = _link_equations(g, wd, [False, False], n, None)
    if drop is not None:
        w = np.where(drop(ri, rj), 0.0, w)  # weight 0: the solver leaves the link out
    return _solve_links(ri, rj, b, w, g.shape[:-1])


def df_bins(A, side):
    ok = np.isfinite(A)
    a = np.where(ok, A - np.nanmin(A), np.inf)
    lse = lambda m: -KT * np.log(np.sum(np.exp(-a[m & ok] / KT)))  # noqa: E731
    return lse(side) - lse(~side)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kdir")
    ap.add_argument("--kappa", default="3000")
    ap.add_argument("--seeds", default="11,12,13,14")
    a = ap.parse_args()
    top = build_system("alanine-dipeptide").mdtraj_topology
    seeds = [int(s) for s in a.seeds.split(",")]
    W = {s: load(os.path.join(a.kdir, f"k{a.kappa}_s{s}"), top) for s in seeds}
    r0 = W[seeds[0]]
    shp, wd, g0 = r0["shp"], r0["wd"], r0["g0"]
    # side of each xi bin from all walkers' frames (any kappa: same CV), filled to unsampled bins by nearest
    cnt, cax, nbar = np.zeros(shp), np.zeros(shp), np.zeros(shp)
    for d in sorted(glob.glob(os.path.join(a.kdir, "k*_s*"))):
        if not os.path.isfile(os.path.join(d, "COLVAR")):
            continue
        res = load_result(d)
        phi = analysis.phi_psi(res.load_trajectory(top))[:, 0]
        i = bins_of(r0, res.colvar_xi())
        np.add.at(cnt, (i[:, 0], i[:, 1]), 1)
        np.add.at(cax, (i[:, 0], i[:, 1]), analysis.c7ax_labels(phi))
        np.add.at(nbar, (i[:, 0], i[:, 1]), (np.abs(phi) < 0.5) | ((phi > 1.6) & (phi < 2.6)))
    frac = np.where(cnt > 0, cax / np.maximum(cnt, 1), np.nan)
    _, (ii, jj) = ndimage.distance_transform_edt(~np.isfinite(frac), return_indices=True)
    side = frac[ii, jj] >= 0.5
    dist_in, dist_out = ndimage.distance_transform_edt(side), ndimage.distance_transform_edt(~side)

    print("== 1. Delta F from frames vs from bins; omega / chirality")
    for s, r in W.items():
        ax = analysis.c7ax_labels(r["phi"]) == 1
        df_frames = -KT * np.log(r['w'][ax].sum() / r['w'][~ax].sum())
        print(f"s{s}: frames {df_frames:.2f}, bins {df_bins(r['A'], side):.2f}; "
              f"C7ax-side frames {ax.mean():.3f}; min |omega| {np.degrees(np.abs(r['om1'])).min():.0f}, "
              f"{np.degrees(np.abs(r['om2'])).min():.0f} deg; CB improper {np.degrees(r['chi'].min()):.0f}.."
              f"{np.degrees(r['chi'].max()):.0f} deg; |lambda - xi| C7ax side "
              f"{np.linalg.norm(r['lam'][ax] - r['xi'][ax], axis=1).mean():.4f} rest "
              f"{np.linalg.norm(r['lam'][~ax] - r['xi'][~ax], axis=1).mean():.4f}")

    X, Y = np.meshgrid(g0[0] + wd[0] * (np.arange(shp[0]) + .5), g0[1] + wd[1] * (np.arange(shp[1]) + .5),
                       indexing="ij")
    dfs = {s: df_bins(r["A"], side) for s, r in W.items()}
    hi = [s for s in seeds if dfs[s] > np.median(list(dfs.values()))]
    lo = [s for s in seeds if s not in hi]

    def swap(h, l_, R, drop=None):
        g, n = W[h]["g"].copy(), W[h]["n"].copy()
        g[R], n[R] = W[l_]["g"][R], W[l_]["n"][R]
        return df_bins(solve(g, n, wd, drop), side)

    print("== 2. swap: high walker with a low walker's gradient + counts in a region of xi (Delta F, kJ/mol)")
    for h_ in (1, 2, 3):
        band = (side & (dist_in <= h_)) | (~side & (dist_out <= h_))
        regs = {"band": band, "C7ax interior": side & ~band, "rest interior": ~side & ~band}
        print(f" band = bins within {h_} CZAR bins ({h_ * wd[0]:.3f} xi) of the boundary: {int(band.sum())} bins")
        for h in hi:
            for l_ in lo:
                print(f"  s{h} ({dfs[h]:.2f}) <- s{l_} ({dfs[l_]:.2f}): " +
                      ", ".join(f"{k} {swap(h, l_, R):.2f}" for k, R in regs.items()) +
                      f" | reverse s{l_} <- s{h} band {swap(l_, h, band):.2f}")
    band = (side & (dist_in <= 3)) | (~side & (dist_out <= 3))
    parts = {"top (xi2 > 0.35)": band & (Y > 0.35) & (X < 0.1),
             "island (xi1 > 0.05)": band & (X > 0.05) & (Y <= 0.35) & (Y > -0.3),
             "inner edge": band & (Y <= 0.35) & (Y > -0.65) & (X <= 0.05),
             "bottom (xi2 <= -0.65)": band & (Y <= -0.65)}
    print(" one part of the 3-bin band swapped: " + "; ".join(parts))
    for h in hi:
        for l_ in lo:
            print(f"  s{h} <- s{l_}: " + ", ".join(f"{swap(h, l_, R):.2f}" for R in parts.values()))

    # the same band swap for one CZAR term at a time: the mean spring force <kappa (lambda - xi)> or -kT grad ln n
    from aesample.estimators import naive_gradient
    for s, r in W.items():
        st = load_result(os.path.join(a.kdir, f"k{a.kappa}_s{s}")).state
        r["mf"] = naive_gradient(np.asarray(st.czar, float).reshape(shp + (2,)), r["n"])
        r["ln"] = r["g"] - r["mf"]
    for h in hi:
        for l_ in lo:
            out = []
            for term, other in (("mf", "ln"), ("ln", "mf")):
                gt = np.where(band[..., None], W[l_][term], W[h][term]) + W[h][other]
                out.append(df_bins(solve(gt, W[h]["n"], wd), side))
            print(f"  s{h} <- s{l_}, 3-bin band, one term only: mean spring force {out[0]:.2f}, "
                  f"-kT grad ln n {out[1]:.2f}")

    print("== 3. frames in each part of the band: phi histogram (edges below), samples C7ax-side/rest-side")
    edges = np.array([-np.pi, -2.5, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 2.3, 2.6, 3.0, np.pi])
    print("  phi edges", np.round(edges, 1).tolist())
    for name, R in parts.items():
        print(" ", name)
        for s, r in W.items():
            i = bins_of(r)
            m = R[i[:, 0], i[:, 1]]
            h, _ = np.histogram(r["phi"][m], edges)
            print(f"   s{s}: {m.sum():4d} frames, phi {h.tolist()}; samples {int(r['n'][R & side].sum())} / "
                  f"{int(r['n'][R & ~side].sum())}")

    print("== 4. cross-boundary links without barrier frames (in any walker); cut them / coarse-cell transitions")
    sf, nbf = side.ravel(), nbar.ravel()
    nobar = lambda ri, rj: (sf[ri] != sf[rj]) & (nbf[ri] == 0) & (nbf[rj] == 0)  # noqa: E731
    for s, r in W.items():
        ri, rj, b, w = _link_equations(r["g"], wd, [False, False], r["n"], None)
        c = (sf[ri] != sf[rj]) & (w > 0)
        f = nobar(ri, rj) & (w > 0)
        # transitions between consecutive frames (0.2 ps) from one 0.1-wide cell to an adjacent one across the side
        # boundary of xi, and how many of them also crossed in phi
        i = bins_of(r)
        sd = side[i[:, 0], i[:, 1]]
        cc = i // 4
        adjm = (np.abs(np.diff(cc, axis=0)).sum(axis=1) == 1)
        xs = adjm & (sd[1:] != sd[:-1])
        lab = analysis.c7ax_labels(r["phi"])
        print(f" s{s}: cross links {int(c.sum())}, weight without barrier frames {w[f].sum() / w[c].sum():.2f}; "
              f"Delta F with them cut {df_bins(solve(r['g'], r['n'], wd, nobar), side):.2f} (package "
              f"{dfs[s]:.2f}); frame steps across the xi boundary between adjacent 0.1 cells {int(xs.sum())}, "
              f"of which phi label changed {int((xs & (lab[1:] != lab[:-1])).sum())}")


if __name__ == "__main__":
    main()
