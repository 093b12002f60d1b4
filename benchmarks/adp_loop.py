"""Alanine dipeptide: the full autoencoder-CV / eABF loop, its per-iteration table, and accuracy vs a reference.

    python benchmarks/adp_loop.py --out runs/adp_cpu --profile cpu \\
        --reference benchmarks/data/reference_phi_metad_20ns.npz                  # < 1 h on 2 CPU cores
    (--profile cpu-long: 6 x 1.25 ns walkers per iteration, ~30 min per iteration on 2 cores)
    python benchmarks/adp_loop.py --out runs/adp_cpu --resume ...                 # continue an interrupted run
    python benchmarks/adp_loop.py --out runs/adp_gpu --profile gpu --reference REF.npz   # 10 ns iterations
    (REF.npz: benchmarks/data/reference_phi_metad_20ns.npz, 20 ns metadynamics on phi, or reference_fes.py output)
    python benchmarks/adp_loop.py --out runs/adp_cpu --report-only --reference REF.npz   # table only
    python benchmarks/adp_loop.py --out runs/adp_cpu --efficiency --eff-ns 5 --reference REF.npz

The loop is aesample's own driver (:class:`aesample.driver.LoopDriver`, the code behind ``aesample run``), with
the seed network of the default configuration (the 10 heavy atoms, 30-40-2-40-30, tanh). The configuration
is written to ``<out>/loop_config.yaml`` and the run lives in ``<out>/loop`` (``aesample status <out>/loop``
works on it; ``--resume`` continues it, as ``aesample resume`` would).

Profiles (``--set section.key=value`` overrides either):

* ``cpu``: 1 ns unbiased MD (cheap: ~10^4 ns/day without the CV force), then up to 4 eABF iterations of
  4 walkers x 0.3 ns (vacuum; 5.8 ns in all): 37 min on the 2-core VM (measured 2026-11-22; 182-196 ns/day
  for the four walkers; 4 x 0.6 ns took 17 and 22 min per iteration, ~85 min in all, over the hour). It runs
  the whole pipeline, but 0.3 ns walkers along a CV learned from C7eq did not reach C7ax (1 frame in 24 000):
  its Delta F is not an accuracy result (benchmarks/LOOP_RESULTS.md, sixth session). ``cpu-long`` is.
  Walkers rather than one longer run: one run's Delta F scatters by several kJ/mol between seeds while its two
  halves agree; the walkers' scatter is the error bar (``free_energy_sem``, ``delta_f_phi_sem``) and joins the
  convergence criterion.
* ``cpu-long``: the same with 6 walkers x 1.25 ns per iteration (31 ns in all, ~30 min per iteration on 2 cores):
  the walkers' standard error of Delta F joins the criterion, and 4 walkers of 1.25 ns left it at ~1.2 kJ/mol.
  Both evaluate the CV force every step: with the tight default coupling (eabf.kappa 3000) the CV spring on the
  atoms oscillates with a ~16 fs period, too fast for md.cv_interval 2. ``--water`` (with ``cpu``): 0.02 ns each,
  one walker (TIP3P runs ~6 ns/day on 2 cores).
* ``gpu``: 10 ns unbiased MD, then up to 8 eABF iterations of 10 ns, frames every 1 ps (the paper's lengths).

Printed per iteration: regression score R^2(xi_k ~ xi_k-1) (the driver's convergence criterion), score of
xi_k against (cos, sin) of (phi, psi), Delta F = F(phi > 0) - F(phi < 0) from the iteration's reweighted frames
(walkers pooled) and the standard error of the walkers' own Delta F estimates (then each walker's value), the same
Delta F with the frames weighted by the free energy at half time of the eABF run and the free-energy
drift (RMS change over the second half of the eabf.estimator's free energy, where the frames are; both from runs
made after 2026-11-22), ns simulated (and cumulative), ns/day of the MD stage, training seconds and epochs. Then, per iteration, where the
frames were: how many have phi > 0, how many are in the C7ax basin (0.3 < phi < 2 rad), the reweighted mass at
phi > 0, the effective sample size 1/sum(w^2) of the normalised weights, the largest single weight, the number of
committed C7eq/C5 <-> C7ax transitions and Delta F from each half of the frames (with the final weights).

Accuracy (``--reference``: an .npz from ``benchmarks/reference_fes.py`` or a phi-only .npy): F(phi) of the last
iteration = ``aesample.estimators.reweighted_free_energy`` of phi with that iteration's weights, 72 bins on
[-pi, pi]; compared with the reference at the bin centres where the reference is < 25 kJ/mol, after removing the
mean offset over those bins (free energies are defined up to a constant). Reports the RMS difference, the number
of such bins the run never visited, and Delta F(loop) - Delta F(reference).

Efficiency (``--efficiency``, not part of the default run): simulated ns needed to bring Delta F within
``--tolerance`` (1 kJ/mol) of the reference for (a) unbiased MD of ``--eff-ns`` ns, (b) eABF on (phi, psi) via
``aesample eabf`` for ``--eff-ns`` ns, (c) the loop (cumulative ns at the first iteration whose Delta F is within
tolerance and stays within it). For (a) and (b) Delta F is evaluated on growing prefixes of the frames; (b) with
the CZAR weights of the accumulators as they were at the end of that prefix (the run's 20 block snapshots): what
the run would have reported had it stopped there.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aesample.benchmarking import (  # noqa: E402  (after the path lines above)
    delta_f_from_profile, delta_f_or_nan, half_delta_f, load_reference, ns_to_tolerance, reference_phi_on,
)

PROFILES = {
    "cpu": {
        "loop.initial_md": 1.0, "loop.eabf_per_iteration": 0.3, "loop.walkers": 4, "loop.max_iterations": 4,
        "md.report_interval": 100, "md.segment_steps": 25000,
    },
    "cpu-long": {
        "loop.initial_md": 1.0, "loop.eabf_per_iteration": 1.25, "loop.walkers": 6, "loop.max_iterations": 4,
        "md.report_interval": 100, "md.segment_steps": 25000,
    },
    "cpu-water": {
        "loop.initial_md": 0.02, "loop.eabf_per_iteration": 0.02, "loop.max_iterations": 4,
        "md.report_interval": 50, "md.segment_steps": 5000,
    },
    "gpu": {
        "loop.initial_md": 10.0, "loop.eabf_per_iteration": 10.0, "loop.max_iterations": 8,
        "md.report_interval": 500, "md.segment_steps": 250000,
    },
}
F_CUTOFF = 25.0
NBINS = 72


def build_config(profile: str, water: bool, overrides: list[str]):
    from aesample.config import apply_overrides, config_from_dict, effective_config

    key = "cpu-water" if (profile == "cpu" and water) else profile
    sets = [f"{k}={v}" for k, v in PROFILES[key].items()]
    sets.append(f"system.name={'alanine-dipeptide-water' if water else 'alanine-dipeptide'}")
    return effective_config(apply_overrides(config_from_dict({}), sets + list(overrides)))


def run_loop(out: Path, profile: str, water: bool, overrides: list[str], resume: bool, progress: bool) -> dict:
    from aesample.config import save_config
    from aesample.driver import LoopDriver

    run_dir = out / "loop"
    if resume:
        driver = LoopDriver.open(run_dir)
        print(f"resuming {run_dir}: iteration {driver.state.iteration}, stage {driver.state.stage}", flush=True)
    else:
        config = build_config(profile, water, overrides)
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "loop_config.yaml")
        driver = LoopDriver.create(config, run_dir)
        print(f"loop: {run_dir} (config {out / 'loop_config.yaml'})", flush=True)
    t0 = time.perf_counter()
    summary = driver.run(progress=progress)
    print(f"loop wall time (this process): {time.perf_counter() - t0:.0f} s", flush=True)
    return summary


# ------------------------------------------------------------------------------ analysis
def iteration_phi_weights(run_dir: Path, k: int):
    """(phi per frame (rad), weights, temperature, number of runs) of iteration k: weights uniform at k = 0,
    after that the eabf.estimator's weights of the walkers pooled (as the driver trains on); frames run by run."""
    from aesample import md
    from aesample.analysis import phi_psi
    from aesample.driver import LoopDriver

    driver = LoopDriver.open(run_dir)
    it = run_dir / f"iter_{k:03d}"
    # md_0, md_1, ... in the driver's order (walkers of one iteration are pooled in that order)
    dirs = sorted((p for p in it.glob("md_*") if p.is_dir()), key=lambda p: int(p.name.split("_")[1]))
    results = [md.load_result(d) for d in dirs]
    phi = np.concatenate([phi_psi(r.load_trajectory(driver.system.mdtraj_topology))[:, 0] for r in results])
    if k == 0:
        weights = np.full(len(phi), 1.0 / len(phi))
    else:
        weights = md.PooledRuns(results).reweighting_weights(driver.config.eabf.estimator)
    return phi, weights, float(driver.config.system.temperature), len(results)


def loop_history(run_dir: Path) -> tuple[list[dict], dict]:
    state = json.loads((run_dir / "state.json").read_text())
    rows = []
    for p in sorted(run_dir.glob("iter_*/metrics.json")):
        rows.append(json.loads(p.read_text()))
    return rows, state


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def print_table(rows: list[dict], state: dict, threshold: float) -> None:
    print("\n| iter | R2(xi_k~xi_k-1) | R2(xi~phi,psi) | dF(phi>0 - phi<0) kJ/mol | walkers' SEM | dF, F at half time "
          "| F drift kJ/mol | ns | cumulative ns | ns/day | train s | epochs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    cum = 0.0
    for m in rows:
        cum += m.get("ns") or 0.0
        print(f"| {m['iteration']} | {_fmt(m.get('regression_score'), '.4f')} | {_fmt(m.get('dihedral_score'), '.3f')} "
              f"| {_fmt(m.get('delta_f_phi'), '.2f')} | {_fmt(m.get('delta_f_phi_sem'), '.2f')} "
              f"| {_fmt(m.get('delta_f_phi_half'), '.2f')} "
              f"| {_fmt(m.get('free_energy_drift'), '.2f')} | {_fmt(m.get('ns'), '.3f')} | {cum:.3f} "
              f"| {_fmt(m.get('ns_per_day'), '.0f')} | {_fmt(m.get('training_seconds'), '.1f')} "
              f"| {_fmt(m.get('training_epochs'), 'd')} |")
    for m in rows:
        if m.get("delta_f_phi_walkers"):
            print(f"iteration {m['iteration']}: each walker's own dF: "
                  + ", ".join(_fmt(v, ".2f") for v in m["delta_f_phi_walkers"]))
        if m.get("c7ax_in_shared_bins") is not None:
            print(f"iteration {m['iteration']}: share of the C7ax reweighted mass in xi bins that also hold C7eq/C5 "
                  f"frames: {m['c7ax_in_shared_bins']:.2f}")
    print(f"\nfinished: {state.get('finished')}, converged by the driver's criterion (R2 >= {threshold} from "
          f"loop.min_iterations on and every other condition of aesample.verdict.convergence_blockers): "
          f"{state.get('converged')}")


def coverage(run_dir: Path, rows: list[dict]) -> list[dict]:
    """Where each iteration's frames were: phi > 0, the C7ax basin (0.3 < phi < 2 rad), reweighting degeneracy,
    the number of basin transitions and Delta F from each half of the frames (a spread far above 1 kJ/mol says
    the iteration's Delta F rests on too few transitions to be trusted at that level). With several walkers the
    frames run walker by walker: the halves are the first and the second half of the walkers."""
    from aesample.analysis import basin_transitions

    out = []
    print("\n| iter | frames | frames phi > 0 | of which C7ax (0.3 < phi < 2) | reweighted mass phi > 0 "
          "| effective sample size | largest weight | transitions | dF 1st half | dF 2nd half |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m in rows:
        k = m["iteration"]
        phi, w, temperature, n_runs = iteration_phi_weights(run_dir, k)
        w = w / w.sum()
        c7ax = (phi > 0.3) & (phi < 2.0)
        h1, h2 = half_delta_f(phi, w, temperature)
        r = {"iteration": k, "frames": int(len(phi)), "phi_pos": int((phi > 0).sum()), "c7ax": int(c7ax.sum()),
             "mass_phi_pos": float(w[phi > 0].sum()), "ess": float(1.0 / np.sum(w**2)), "max_weight": float(w.max()),
             "transitions": basin_transitions(phi, n_runs), "delta_f_first_half": h1, "delta_f_second_half": h2}
        out.append(r)
        print(f"| {k} | {r['frames']} | {r['phi_pos']} | {r['c7ax']} | {r['mass_phi_pos']:.4f} | {r['ess']:.0f} "
              f"| {r['max_weight']:.3f} | {r['transitions']} | {h1:.2f} | {h2:.2f} |")
    return out


def accuracy(run_dir: Path, k: int, ref: dict) -> dict:
    from aesample.estimators import reweighted_free_energy

    phi, w, temperature, _ = iteration_phi_weights(run_dir, k)
    fes, edges = reweighted_free_energy(phi, w, NBINS, temperature, range_=[(-np.pi, np.pi)])
    centers = 0.5 * (edges[0][1:] + edges[0][:-1])
    r = reference_phi_on(centers, ref)
    low = r < F_CUTOFF
    seen = low & np.isfinite(fes)
    offset = float(np.mean(fes[seen] - r[seen])) if seen.any() else float("nan")
    dev = fes - r - offset
    df = delta_f_or_nan(phi, w, temperature)
    out = {
        "iteration": k, "bins_compared": int(seen.sum()), "bins_below_cutoff": int(low.sum()),
        "bins_unvisited": int((low & ~np.isfinite(fes)).sum()),
        "rms_f_phi": float(np.sqrt(np.mean(dev[seen] ** 2))) if seen.any() else float("nan"),
        "max_abs_f_phi": float(np.abs(dev[seen]).max()) if seen.any() else float("nan"),
        "delta_f_loop": df, "delta_f_reference": float(ref["delta_f"]),
        "delta_f_reference_check": delta_f_from_profile(ref["phi"], ref["f_phi"], temperature),
    }
    out["delta_f_difference"] = out["delta_f_loop"] - out["delta_f_reference"]
    print(f"\naccuracy of iteration {k} vs reference {ref.get('source')} ({ref['cvs']}, {ref['ns']:g} ns):")
    print(f"  F(phi) where reference < {F_CUTOFF:g} kJ/mol: {out['bins_compared']} of {out['bins_below_cutoff']} bins "
          f"visited; RMS {out['rms_f_phi']:.2f} kJ/mol, max |dev| {out['max_abs_f_phi']:.2f} kJ/mol (mean offset removed)")
    print(f"  Delta F: loop {df:.2f}, reference {out['delta_f_reference']:.2f}, "
          f"difference {out['delta_f_difference']:+.2f} kJ/mol")
    print("  phi (rad)  F_loop  F_ref")
    for i in range(0, NBINS, 4):
        fl = "  nan" if not np.isfinite(fes[i]) else f"{fes[i] - offset:6.2f}"
        print(f"  {centers[i]:7.3f}  {fl}  {r[i]:6.2f}")
    return out


# ------------------------------------------------------------------------------ efficiency
def _prefix_delta_f(phi, w, temperature, ns_total, points=20):
    n = len(phi)
    ms = [max(2, int(n * j / points)) for j in range(1, points + 1)]
    return [(ns_total * m / n, delta_f_or_nan(phi[:m], w[:m], temperature)) for m in ms]


EFF_REPORT = 100  # steps between frames of the efficiency runs


def efficiency(out: Path, ref: dict, eff_ns: float, tol: float, rows: list[dict],
               seeds: tuple[int, int] = (7, 2022)) -> dict:
    """seeds: (unbiased MD, eABF on (phi, psi)); the defaults are those of the first comparison."""
    from aesample import md
    from aesample.analysis import phi_psi
    from aesample.eabf import EABFState
    from aesample.md import MDSettings
    from aesample.systems import build_system

    ms = build_system("alanine-dipeptide")
    ref_df = float(ref["delta_f"])
    result = {}
    # (a) unbiased MD
    ud = out / "eff_unbiased"
    steps = int(round(eff_ns * 5e5)) // EFF_REPORT * EFF_REPORT
    settings = MDSettings(timestep=0.002, friction=1.0, temperature=ms.temperature, report_interval=EFF_REPORT,
                          segment_steps=50000, seed=seeds[0], minimize=True, equilibration_steps=5000)
    md.run_md(ms, settings, ud, steps, resume=True, progress=False)
    phi = phi_psi(md.load_result(ud).load_trajectory(ms.mdtraj_topology))[:, 0]
    series = _prefix_delta_f(phi, np.ones(len(phi)), ms.temperature, eff_ns)
    result["unbiased"] = {"series": series, "ns_to_tol": ns_to_tolerance(series, ref_df, tol)}
    # (b) eABF on (phi, psi) through the command line
    ed = out / "eff_eabf_phipsi"
    exe = Path(sys.executable).parent / "aesample"
    cmd = [str(exe), "eabf", "--system", "alanine-dipeptide", "--cv", "phi,psi", "--ns", str(eff_ns), "--out", str(ed),
           "--bins", "36", "--full-samples", "100", "--report-interval", str(EFF_REPORT), "--no-progress",
           "--seed", str(seeds[1])]
    if (ed / "checkpoint.json").exists():
        cmd.append("--resume")
    subprocess.run(cmd, check=True)
    res = md.load_result(ed)
    phi = phi_psi(res.load_trajectory(ms.mdtraj_topology))[:, 0]
    xi = res.colvar_xi()
    series = []
    # what the run knew at each time: the cumulative accumulators saved at each time-block end (blocks/), with the
    # frames up to that step
    for step, snap in res.block_snapshots():
        m = min(len(phi), step // EFF_REPORT)
        w = res.reweighting_weights(state=EABFState.load(snap), xis=xi[:m])
        series.append((eff_ns * step / steps, delta_f_or_nan(phi[:m], w, ms.temperature)))
    result["eabf_phi_psi"] = {"series": series, "ns_to_tol": ns_to_tolerance(series, ref_df, tol)}
    # (c) the loop, per iteration (cumulative ns, that iteration's reweighted Delta F)
    cum, series = 0.0, []
    for m in rows:
        cum += m.get("ns") or 0.0
        d = m.get("delta_f_phi")
        series.append((cum, float("nan") if d is None else d))
    result["loop"] = {"series": series, "ns_to_tol": ns_to_tolerance(series, ref_df, tol)}
    print(f"\nefficiency: simulated ns until Delta F stays within {tol:g} kJ/mol of {ref_df:.2f}:")
    for name, r in result.items():
        last = r["series"][-1] if r["series"] else (0, float("nan"))
        print(f"  {name:14s} {_fmt(r['ns_to_tol'], '.3f'):>8s} ns   (last: {last[1]:.2f} kJ/mol at {last[0]:.3f} ns)")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="benchmark folder (loop in <out>/loop)")
    p.add_argument("--profile", choices=["cpu", "cpu-long", "gpu"], default="cpu")
    p.add_argument("--water", action="store_true", help="alanine dipeptide in TIP3P instead of vacuum")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override, e.g. --set loop.max_iterations=6 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue <out>/loop")
    p.add_argument("--report-only", action="store_true", help="no MD: print the table of an existing run")
    p.add_argument("--reference", type=Path, help="reference .npz (reference_fes.py) or phi-only .npy")
    p.add_argument("--efficiency", action="store_true", help="also run the unbiased / eABF(phi,psi) comparison")
    p.add_argument("--eff-ns", type=float, default=5.0, help="length of each efficiency run, ns")
    p.add_argument("--eff-seeds", type=int, nargs=2, default=(7, 2022), metavar=("UNBIASED", "EABF"),
                   help="random seeds of the unbiased and the (phi, psi) eABF efficiency runs (default 7 2022)")
    p.add_argument("--tolerance", type=float, default=1.0, help="Delta F tolerance, kJ/mol")
    p.add_argument("--quiet", action="store_true", help="no progress bars / per-iteration lines from the driver")
    a = p.parse_args(argv)
    if not a.report_only:
        run_loop(a.out, a.profile, a.water, a.overrides, a.resume, progress=not a.quiet)
    run_dir = a.out / "loop"
    from aesample.driver import LoopDriver

    loop_cfg = LoopDriver.open(run_dir).config.loop
    rows, state = loop_history(run_dir)
    print_table(rows, state, loop_cfg.convergence_threshold)
    if rows and not state.get("converged"):
        from aesample.verdict import convergence_blockers

        print(f"held back at iteration {rows[-1]['iteration']} by:")
        for b in convergence_blockers(rows[-1], loop_cfg):
            print(f"  - {b}")
    report = {"run": str(run_dir), "rows": rows, "state": {k: state[k] for k in ("finished", "converged")}}
    if rows and not a.water:
        report["coverage"] = coverage(run_dir, rows)
    if a.reference is not None and rows:

        ref = load_reference(a.reference)
        if a.water:
            print("note: the reference is alanine dipeptide in vacuum; the comparison with a water run is not like for like")
        report["accuracy"] = accuracy(run_dir, rows[-1]["iteration"], ref)
        if a.efficiency:
            report["efficiency"] = efficiency(a.out, ref, a.eff_ns, a.tolerance, rows, tuple(a.eff_seeds))
    path = a.out / "benchmark.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    previous.update(report)  # a --report-only call keeps an earlier efficiency result
    path.write_text(json.dumps(previous, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
