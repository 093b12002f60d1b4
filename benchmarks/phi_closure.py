"""Issue 14: where the closure of the 1D phi eABF mean force (oint A'(phi) dphi, ~6.7 kJ/mol in 2 ns) comes from.

    aesample eabf --system alanine-dipeptide --cv phi --ns 2 --report-interval 100 --out runs/phi2ns
    python benchmarks/phi_closure.py runs/phi2ns

Prints, for the CZAR gradient on the xi grid and the naive one on the lambda grid:

* the closure of the final accumulators, split into the -kT d ln n/dz part (zero by construction on a periodic
  grid) and the <kappa (lambda - z)> part;
* the closure of the cumulative snapshots over time (blocks/) and of each block's own accumulators: a
  statistical closure changes sign between blocks and its total shrinks as 1/sqrt(time); a systematic one keeps
  its sign;
* the same mean force recomputed from the COLVAR rows, kappa * wrap(lambda - xi) averaged per xi bin with the
  periodic difference taken explicitly: a wrong wrap of xi - lambda at the seam in the accumulators would show up
  as a difference here;
* the net winding of phi (net laps around the circle, from the unwrapped xi of the COLVAR) and of lambda: a
  non-conservative ABF force (an estimate whose closure is not zero, applied bin by bin) drives a current around
  the ring, and a current makes the conditional averages non-equilibrium (friction), which keeps the closure up.
"""
import sys

import numpy as np

from aesample import estimators as est
from aesample.md import load_result

T = 300.0


def main() -> None:
    res = load_result(sys.argv[1])
    st = res.state
    kappa = float(np.atleast_1d(st.kappa)[0])
    h = float(st.z_bin_width[0])
    g = st.czar_gradient(T)[:, 0]
    n = st.zcount.astype(float)
    mean = est.naive_gradient(st.czar, n)[:, 0]
    dln = -est.kT(T) * est._log_density_gradient(n, [h], [True])[:, 0]
    print(f"final CZAR closure {est.closure_1d(g, h):.2f} kJ/mol = -kT dln n part {est.closure_1d(dln, h):.2f} "
          f"+ <kappa(lambda-z)> part {est.closure_1d(mean, h):.2f}; bins {len(g)}, min count {n.min():.0f}")
    gn = st.naive_gradient()[:, 0]
    print(f"final naive (lambda grid) closure {est.closure_1d(gn, float(st.bin_width[0])):.2f} kJ/mol")
    # over time
    from aesample.md import _block_increments_of

    fb, blocks = _block_increments_of(res.out_dir, st, len(res.colvar_xi()), int(res.run["report_interval"]),
                                      int(res.checkpoint["step"]))
    cum, own = [], []
    acc = None
    from aesample.eabf import EABFState

    for b in blocks:
        acc = b if acc is None else EABFState.weighted_sum([(1, acc), (1, b)])
        cum.append(est.closure_1d(acc.czar_gradient(T)[:, 0], h))
        own.append(est.closure_1d(b.czar_gradient(T)[:, 0], h))
    print("cumulative closure per block end:", np.round(cum, 2).tolist())
    print("each block's own closure:", np.round(own, 2).tolist())
    o = np.asarray(own)
    o = o[np.isfinite(o)]
    if o.size > 1:
        print(f"  blocks with a closure: {o.size}; mean {o.mean():.2f}, SD {o.std(ddof=1):.2f}, SEM of the mean "
              f"{o.std(ddof=1) / np.sqrt(o.size):.2f}; positive in {np.mean(o > 0):.2f} of them")
    # COLVAR: explicit periodic difference
    xi = res.colvar_xi()[:, 0]
    lam = res.colvar_lambda()[:, 0]
    d = np.mod(lam - xi + np.pi, 2 * np.pi) - np.pi
    print(f"COLVAR: |lambda - xi| max {np.abs(lam - xi).max():.3f} rad raw, {np.abs(d).max():.3f} wrapped "
          f"(coupling width {np.sqrt(est.kT(T) / kappa):.3f})")
    idx = np.mod(np.floor((xi + np.pi) / h).astype(int), len(g))
    s = np.bincount(idx, weights=kappa * d, minlength=len(g))
    c = np.bincount(idx, minlength=len(g)).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        m_col = s / c
        ln = np.log(c)
    dln_col = -est.kT(T) * (np.roll(ln, -1) - np.roll(ln, 1)) / (2 * h)
    print(f"COLVAR rows: <kappa wrap(lambda - xi)> closure {est.closure_1d(m_col, h):.2f}, "
          f"+ -kT dln n {est.closure_1d(dln_col, h):.2f}; accumulator mean vs COLVAR mean: RMS diff "
          f"{np.sqrt(np.nanmean((m_col - mean) ** 2)):.2f} kJ/mol/rad over bins (sampling of rows only)")
    for name, v in (("xi (phi)", xi), ("lambda", lam)):
        u = np.unwrap(v)
        laps = (u[-1] - u[0]) / (2 * np.pi)
        print(f"net winding of {name}: {laps:+.2f} laps over the run")
    u = np.unwrap(xi)
    wind = [float((u[fb == b][-1] - u[fb == b][0]) / (2 * np.pi)) if np.any(fb == b) else np.nan
            for b in range(len(blocks))]
    print("net winding of phi per block, laps:", np.round(wind, 2).tolist())
    ok = np.isfinite(own) & np.isfinite(wind)
    if ok.sum() > 2:
        print(f"  correlation of a block's own closure with its winding: r = "
              f"{np.corrcoef(np.asarray(own)[ok], np.asarray(wind)[ok])[0, 1]:.2f} over {ok.sum()} blocks")
    half = len(xi) // 2
    for part, sl in (("first half", slice(0, half)), ("second half", slice(half, None))):
        u = np.unwrap(xi[sl])
        print(f"  {part}: net winding of phi {(u[-1] - u[0]) / (2 * np.pi):+.2f} laps")


if __name__ == "__main__":
    main()
