"""Per-walker error bars of Delta F against the walker-to-walker spread on the synthetic curved band, with enough
walkers to know the ratio (issue 14 item 4).

The model, walker and error bars of ``tests/test_estimators_integration.py`` (the model of
``benchmarks/synthetic_band_walkers.py``; exact Delta F by quadrature), at scale. Two steps, so that estimators
can be re-analysed without re-running MD:

    OMP_NUM_THREADS=1 python benchmarks/synthetic_band_errorbars.py run DIR FIRST_SEED N_WALKERS [N_STEPS]
    OMP_NUM_THREADS=1 python benchmarks/synthetic_band_errorbars.py analyse DIR [DIR ...] [--n-boot 40] [--json OUT]

``run`` writes per walker ``DIR/w<seed>.npz``: 20 cumulative accumulator snapshots (the loop's block count) and
the frames' xi = (x, y) every 50 steps. ``analyse`` computes per walker Delta F(theta > 0 vs theta <= 0) from the
reweighted frames (what ``md.FreeEnergyEstimates.free_energy_error`` reports as
``delta_f``) and its error bars -- the shipped ``delta_f_error`` (the block bootstrap's with at least as many
basin visits as blocks, else the larger of it and the basin visits'; loop's n_boot 40 and 5-frame dwell) and both
parts, and the CZAR grid's Delta F with its Bayesian block
bootstrap -- then the ratio RMS(error bar) / walkers' SD with a
95 % interval (chi-square interval of the SD with the RMS error bar held fixed, and a bootstrap over walkers).
Also each walker's Delta F from the first and the second half of its samples (``md``'s ``delta_f_halves``: the
snapshot after half of the blocks with the frames up to then, the rest with the rest), half their difference
(``halves``) and the loop's basins' error bar with it (``error_with_halves``, its largest when a single walker),
and the mean second-minus-first difference over walkers: a start-up transient of the estimator would show there.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

# the model and its walker live in the test that runs it on 8 walkers (one copy of both)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.test_estimators_integration import (KT, WALKER_STEPS, WalkerEstimates, _exact_delta_f,  # noqa: E402
                                               _grid_delta_f, _walker, theta)

from aesample.eabf import EABFState  # noqa: E402

STATE_ARRAYS = ("count", "grad", "zcount", "czar")


def run_walker(seed: int, n_steps: int, path: Path) -> None:
    """One walker of the test's model (20 blocks, frames every 50 steps) saved as snapshots + frames."""
    snaps, xi, block = _walker(seed, n_steps)
    first = snaps[0]
    arrays = {f"s{b:02d}_{k}": np.asarray(getattr(s, k)) for b, s in enumerate(snaps) for k in STATE_ARRAYS}
    np.savez_compressed(path, xi=xi, block=block, seed=seed, n_steps=n_steps,
                        grid_min=first.grid_min, grid_max=first.grid_max, bins=first.bins, zbins=first.zbins,
                        periodic=first.periodic, kappa=first.kappa, meta_keys=list(first.meta),
                        meta_values=[str(v) for v in first.meta.values()], **arrays)


def load_walker(path: Path):
    """(cumulative snapshots, frames' xi, frames' block index) of a saved walker."""
    z = np.load(path)
    block = z["block"]  # every block holds frames: its snapshot count
    meta = dict(zip([str(k) for k in z["meta_keys"]], [str(v) for v in z["meta_values"]]))
    snaps = [EABFState(grid_min=z["grid_min"], grid_max=z["grid_max"], bins=z["bins"], periodic=z["periodic"],
                       kappa=z["kappa"], last=np.zeros(len(z["bins"])), meta=dict(meta), zbins=z["zbins"],
                       **{k: z[f"s{b:02d}_{k}"] for k in STATE_ARRAYS}) for b in range(len(set(block)))]
    return snaps, z["xi"], block


def ratio_interval(df: np.ndarray, err: np.ndarray, n_boot: int = 4000, seed: int = 0) -> Dict[str, float]:
    """RMS(err) / SD(df) with 95 % intervals: chi-square of the SD (error bars fixed), bootstrap over walkers."""
    from scipy.stats import chi2

    n = len(df)
    sd = float(np.std(df, ddof=1))
    rms = float(np.sqrt(np.mean(err ** 2)))
    lo_sd = sd * np.sqrt((n - 1) / chi2.ppf(0.975, n - 1))
    hi_sd = sd * np.sqrt((n - 1) / chi2.ppf(0.025, n - 1))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (n_boot, n))
    boot = np.sqrt(np.mean(err[idx] ** 2, axis=1)) / np.std(df[idx], axis=1, ddof=1)
    return {"ratio": rms / sd, "rms_error": rms, "sd": sd, "chi2_95": [rms / hi_sd, rms / lo_sd],
            "walker_boot_95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]}


def analyse(paths: List[Path], n_boot: int) -> Dict[str, object]:
    exact = _exact_delta_f() / KT
    rows = []
    for p in paths:
        t0 = time.time()
        snaps, xi, block = load_walker(p)
        fe = WalkerEstimates(snaps, xi, block)
        seed = int(np.load(p)["seed"])
        r = fe.delta_f(seed=seed, n_boot=n_boot)
        # the grid's Delta F (Boltzmann sum over CZAR bins) and its Bayesian block bootstrap: the 2026-12-04 table
        grid_reps = [_grid_delta_f(st) for st, _ in fe.bootstrap(n_boot=n_boot, seed=seed)]
        labels = (theta(xi) > 0).astype(int)
        halves = fe.delta_f_halves(labels, xis=xi)  # each half of the samples with its own frames
        split = 0.5 * abs(halves["second"] - halves["first"])
        rows.append({"walker": p.name, "delta_f": r["delta_f"] / KT, "error": r["delta_f_error"] / KT,
                     "bootstrap": r["delta_f_error_bootstrap"] / KT, "visits": r["delta_f_error_visits"] / KT,
                     "error_from": r["delta_f_error_from"],
                     "transitions": r["delta_f_visits"]["transitions"], "grid_delta_f": _grid_delta_f(snaps[-1]) / KT,
                     "grid_bootstrap": float(np.std(grid_reps, ddof=1)) / KT,
                     "first_half": halves["first"] / KT, "second_half": halves["second"] / KT, "halves": split / KT,
                     # the loop's basins' error bar without walkers: the run's own, at least half the halves' gap
                     "error_with_halves": float(np.fmax(r["delta_f_error"], split)) / KT})
        print(f"{p.name}: dF {rows[-1]['delta_f']:.3f} kT, error {rows[-1]['error']:.3f} (bootstrap "
              f"{rows[-1]['bootstrap']:.3f}, visits {rows[-1]['visits']:.3f}, {rows[-1]['transitions']} "
              f"transitions) {time.time() - t0:.1f}s", flush=True)
    df = np.array([r["delta_f"] for r in rows])
    out: Dict[str, object] = {"walkers": len(rows), "exact_kT": exact, "mean_minus_exact": float(df.mean() - exact),
                              "error_from_bootstrap": sum(r["error_from"] == "bootstrap" for r in rows), "rows": rows}
    for key in ("error", "bootstrap", "visits", "halves", "error_with_halves"):
        out[key] = ratio_interval(df, np.array([r[key] for r in rows]))
    # a start-up transient of the estimate would show as a mean difference between the halves
    first, second = (np.array([r[h] for r in rows]) for h in ("first_half", "second_half"))
    gap = second - first
    out["second_minus_first_half"] = {"mean": float(np.nanmean(gap)),
                                      "sem": float(np.nanstd(gap, ddof=1) / np.sqrt(np.isfinite(gap).sum())),
                                      "first_mean_minus_exact": float(np.nanmean(first) - exact),
                                      "second_mean_minus_exact": float(np.nanmean(second) - exact)}
    grid = np.array([r["grid_delta_f"] for r in rows])
    out["grid_mean_minus_exact"] = float(grid.mean() - exact)
    out["grid_bootstrap"] = ratio_interval(grid, np.array([r["grid_bootstrap"] for r in rows]))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("dir", type=Path)
    r.add_argument("first_seed", type=int)
    r.add_argument("n_walkers", type=int)
    r.add_argument("n_steps", type=int, nargs="?", default=WALKER_STEPS)
    a = sub.add_parser("analyse")
    a.add_argument("dirs", type=Path, nargs="+", help="walker directories, pooled")
    a.add_argument("--n-boot", type=int, default=40)  # the loop's (loopstages: free_energy_error n_boot=40)
    a.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "run":
        args.dir.mkdir(parents=True, exist_ok=True)
        for seed in range(args.first_seed, args.first_seed + args.n_walkers):
            path = args.dir / f"w{seed}.npz"
            if path.exists():  # resumable: a walker is written once, atomically enough for a benchmark
                continue
            t0 = time.time()
            run_walker(seed, args.n_steps, path)
            print(f"walker {seed}: {time.time() - t0:.1f}s", flush=True)
        return
    out = analyse(sorted(p for d in args.dirs for p in d.glob("w*.npz")), args.n_boot)
    summary = {k: v for k, v in out.items() if k != "rows"}
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
