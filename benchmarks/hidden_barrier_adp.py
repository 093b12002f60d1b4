"""Check the hidden-barrier diagnostic (aesample.hiddenbarrier) on alanine dipeptide, where phi tells the truth.

    # a C7ax start (benchmarks/data/adp_c7ax.pdb), an iteration-0 CV trained on unbiased frames of both basins
    aesample run --system alanine-dipeptide --out runs/loop0 \\
        --set 'loop.initial_structures=[benchmarks/data/adp_c7ax.pdb]' --set loop.initial_md=0.5 \\
        --set loop.max_iterations=1 --set loop.eabf_per_iteration=0.01 --set loop.walker_processes=1
    # walkers along that fixed CV with the loop's eABF settings (seeds 11..14)
    aesample eabf --system alanine-dipeptide --cv-model runs/loop0/iter_000/cv.pt --grid-min -1.5 --grid-max 1.5 \\
        --bins 30 --kappa 3000 --full-samples 100 --extended-period 0.2 --report-interval 100 --seed 11 --ns 1 \\
        --out runs/walker_0
    # a control where xi resolves phi
    aesample eabf --system alanine-dipeptide --cv phi,psi --ns 0.5 --report-interval 100 --seed 5 --out runs/phipsi
    python benchmarks/hidden_barrier_adp.py --cv runs/loop0/iter_000/cv.pt --walkers runs/walker_* \\
        --control runs/phipsi [--json out.json]

Per run (and the walkers pooled): the slow split (aesample.slowsplit) with its crossings against the phi
transitions; the detector's flagged fraction (features = the CV's own input features, aligned heavy-atom
coordinates; the run's eABF grid) against the truth from phi: the share in bins holding >= 10 % of each side
(C7ax: 0 < phi < 2.3 rad, vs the rest), both weighted two ways as the loop does: by the run's CZAR reweighting
weights and by frames; and Delta F(C7ax - rest) from the weights. The control runs the detector with the same aligned heavy-atom coordinates (the built
structure as reference) on a (phi, psi) eABF run.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aesample.estimators import kT  # noqa: E402  (after the path line above)

C7AX = (0.0, 2.3)  # rad: the C7ax side of the phi barrier, as in the issue


def truth_mixed_fraction(phi: np.ndarray, flat_bins: np.ndarray, w: np.ndarray, min_side: float = 0.1) -> float:
    """Weight fraction in bins whose weight is >= ``min_side`` C7ax and >= ``min_side`` rest."""
    ax = (phi > C7AX[0]) & (phi < C7AX[1])
    tot, mixed = w.sum(), 0.0
    for b in np.unique(flat_bins[flat_bins >= 0]):
        m = flat_bins == b
        wb = w[m].sum()
        if wb <= 0:
            continue
        q = w[m & ax].sum() / wb
        if min(q, 1 - q) >= min_side:
            mixed += wb
    return float(mixed / tot)


def delta_f(phi: np.ndarray, w: np.ndarray, kT: float) -> float:
    ax = (phi > C7AX[0]) & (phi < C7AX[1])
    pa, pr = w[ax].sum(), w[~ax].sum()
    return float(-kT * math.log(pa / pr)) if pa > 0 and pr > 0 else float("nan")


def _grid(res):
    st = res.state
    shape = tuple(int(n) for n in np.atleast_1d(st.bins)) if hasattr(st, "bins") else st.count.shape[: st.d]
    return np.asarray(st.grid_min, float), np.asarray(st.bin_width, float), shape, [bool(p) for p in st.periodic]


def load_run(run_dir: Path, featurize, topology):
    """(features, xi, czar weights, phi, grid, kT) of one eABF run directory."""
    import mdtraj

    from aesample.md import load_result

    res = load_result(run_dir)
    traj = res.load_trajectory(topology)
    xi = res.colvar_xi()
    n = min(traj.n_frames, xi.shape[0])
    if traj.n_frames != xi.shape[0]:
        print(f"  {run_dir}: {traj.n_frames} frames vs {xi.shape[0]} COLVAR rows; using {n}")
    traj, xi = traj[:n], xi[:n]
    w = res.reweighting_weights("czar", xis=xi)
    phi = mdtraj.compute_phi(traj)[1][:, 0]
    return featurize(traj.xyz), xi, w, phi, _grid(res), kT(res.temperature)


def analyse(name, feats, xi, w, phi, grid, kT, runs=None, **kw):
    """Detector and truth on one run (or pooled runs), weighted two ways as the loop weighs them: by the CZAR
    reweighting weights (Boltzmann) and by frames (every frame alike: where the biased run spends its time)."""
    from aesample.hiddenbarrier import _coarse_index, bin_indices, hidden_barrier
    from aesample.slowsplit import slow_split

    gmin, width, shape, periodic = grid
    frames = np.full(len(w), 1.0 / len(w))
    hb = hidden_barrier(feats, xi, w, runs, gmin, width, shape, periodic, **kw)
    hbs = hidden_barrier(feats, xi, frames, runs, gmin, width, shape, periodic, **kw)
    flat = bin_indices(xi, gmin, width, shape, periodic)
    truth = truth_mixed_fraction(phi, flat, w)
    truth_s = truth_mixed_fraction(phi, flat, frames)
    ax_frac = float(np.mean((phi > C7AX[0]) & (phi < C7AX[1])))
    row = {"run": name, "frames": int(len(w)), "c7ax_frames": ax_frac, "detector": hb.weight_fraction,
           "flagged": hb.flagged, "n_flagged": hb.n_flagged, "n_examined": hb.n_examined,
           "examined_weight": hb.examined_weight, "coarsen": list(hb.coarsen), "truth_mixed": truth,
           "detector_frames": hbs.weight_fraction, "flagged_frames": hbs.flagged, "coarsen_frames": list(hbs.coarsen),
           "truth_mixed_frames": truth_s, "delta_f": delta_f(phi, w, kT)}
    print(f"{name:>12s}  frames {len(w):6d}  C7ax frames {ax_frac:5.3f}  | weight: detector {hb.weight_fraction:6.3f} "
          f"({'FLAG' if hb.flagged else 'ok  '}, x{hb.coarsen[0]}) truth {truth:6.3f} | frames: detector "
          f"{hbs.weight_fraction:6.3f} ({'FLAG' if hbs.flagged else 'ok  '}, x{hbs.coarsen[0]}) truth {truth_s:6.3f} "
          f"| dF(C7ax-rest) {row['delta_f']:6.2f} kJ/mol")
    ax = (phi > C7AX[0]) & (phi < C7AX[1])
    for label, res, ww in (("weight", hb, w), ("frames", hbs, frames)):
        cflat, cshape = _coarse_index(flat, tuple(shape), res.coarsen)
        for b in [b for b in res.bins if b.flagged][:4]:
            m = cflat == np.ravel_multi_index(b.index, cshape)
            q = float(ww[m & ax].sum() / max(ww[m].sum(), 1e-300))
            print(f"      {label}: bin {b.index} n={b.n_frames:5d} mixed={b.mixed_weight:.3f} share={b.share:.2f} "
                  f"D={b.separation:5.2f} pers={b.persistence:5.2f} disp={b.dispersion:6.1f} pc{b.component}  "
                  f"truth C7ax share {q:.2f}")
    row["bins"] = hb.as_dict(max_bins=10)["bins"]
    row["bins_frames"] = hbs.as_dict(max_bins=10)["bins"]
    # a barrier between neighbouring bins: the walkers' crossings between the slowest split's two sets of bins,
    # against the truth (phi transitions between C7ax and the rest, per run)
    split = slow_split(xi, runs, gmin, width, shape, periodic)
    run_ids = np.zeros(len(phi), int) if runs is None else np.asarray(runs)
    true_cross = [int(np.count_nonzero(np.diff(ax[run_ids == r].astype(int)))) for r in dict.fromkeys(run_ids)]
    row["slow_split"] = split.as_dict()
    row["phi_transitions"] = true_cross
    print(f"      slow split: {100 * min(split.shares or [0]):.0f}/{100 * max(split.shares or [0]):.0f} % of the "
          f"frames, crossings {split.crossings} ({'FLAG' if split.flagged else 'ok'}); truth: C7ax <-> rest "
          f"transitions {true_cross}")
    return row


def main(argv=None):
    import torch

    from aesample.export import load_cv
    from aesample.features import AlignedPositions
    from aesample.selection import select_atoms
    from aesample.systems import build_system

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cv", type=Path, required=True, help="exported CV the walkers ran along (cv.pt)")
    p.add_argument("--walkers", type=Path, nargs="+", required=True, help="eABF run directories along --cv")
    p.add_argument("--control", type=Path, nargs="*", default=[], help="eABF runs along phi,psi (must not flag)")
    p.add_argument("--json", type=Path, help="write the table here")
    a = p.parse_args(argv)

    ms = build_system("alanine-dipeptide")
    top = ms.mdtraj_topology
    cv, _ = load_cv(a.cv)
    zero_box = torch.zeros(3, 3, dtype=torch.float64)

    def cv_features(xyz):
        # the exported CV's own featurizer: its input features, exactly as the encoder sees them
        with torch.no_grad():
            return cv.features(torch.as_tensor(xyz, dtype=torch.float64), zero_box).numpy()

    # Control: aligned heavy-atom coordinates on the built structure, as loopstages._featurizer builds them.
    idx = select_atoms(top, "protein and not element H", what="selection")
    aligned = AlignedPositions(idx, ms.positions[idx])

    def heavy_features(xyz):
        with torch.no_grad():
            return aligned(torch.as_tensor(xyz, dtype=torch.float64), zero_box).numpy()

    rows, pooled = [], []
    print(f"CV {a.cv}")
    for k, d in enumerate(a.walkers):
        feats, xi, w, phi, grid, kt = load_run(d, cv_features, top)
        rows.append(analyse(d.name, feats, xi, w, phi, grid, kt))
        pooled.append((feats, xi, phi, np.full(len(w), k), d))
    if len(pooled) > 1:
        # Walkers pooled as the loop pools them: summed accumulators -> one set of weights.
        from aesample.md import PooledRuns, load_result

        pr = PooledRuns([load_result(d) for *_, d in pooled])
        xi = np.concatenate([x for _, x, *_ in pooled])
        w = pr.reweighting_weights("czar", xis=xi)
        rows.append(analyse("pooled", np.concatenate([f for f, *_ in pooled]), xi, w,
                            np.concatenate([ph for _, _, ph, *_ in pooled]), _grid(pr), kT(pr.temperature),
                            runs=np.concatenate([r for *_, r, _ in pooled])))
    for d in a.control:
        feats, xi, w, phi, grid, kt = load_run(d, heavy_features, top)
        rows.append(analyse(f"ctl:{d.name}", feats, xi, w, phi, grid, kt))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
