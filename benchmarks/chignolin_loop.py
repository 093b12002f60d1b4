"""Chignolin (CLN025, GBn2 implicit solvent, 340 K): a short loop and whether its CV separates folded / unfolded.

    python benchmarks/chignolin_loop.py --out runs/chig_cpu --profile cpu --hot-start-ps 200   # the CPU budget below
    python benchmarks/chignolin_loop.py --out runs/chig_cpu --resume                          # continue it
    python benchmarks/chignolin_loop.py --out runs/chig_smoke --profile smoke                 # seconds-minutes

CPU budget (profile ``cpu``, stated, NOT run in the session that wrote this script): 0.5 ns unbiased MD from the
folded 5AWL structure (and from the unfolded hot-start structure when ``--hot-start-ps`` is given), then up to 3
eABF iterations of 0.5 ns along the learned 2D CV (C-alpha inputs, 30-40-2-40-30 tanh). At the ~11-14 ns/day
measured for chignolin on 2 loaded CPU cores (benchmarks/EABF_RESULTS.md) that is 2-2.5 ns, about 4-5 hours, plus
~15 min for a 200 ps hot start. The ``gpu`` profile uses 10 ns per stage.

``--hot-start-ps N``: before the loop, N ps of unbiased MD at 600 K (``--hot-start-temperature``; same force
field, implicit solvent) from the folded structure, cooled for 0.5 ps at 340 K; the last frame is written to
``<out>/hot_start.pdb`` and added to ``loop.initial_structures`` (semi-supervised start with an unfolded
structure, as the loop allows), so iteration 0 already sees both states.

Evaluation (printed after the loop, also with ``--report-only``): all frames of all iterations, C-alpha RMSD to
5AWL (``aesample.analysis.chignolin_observables``); folded = RMSD < 0.2 nm, unfolded = RMSD > 0.4 nm. With the
final CV xi (2D): the regression score of RMSD on xi (weighted with the loop's own frame weights: each eABF
iteration's walkers pooled, iterations weighted equally), and the
ROC AUC of the folded/unfolded split along the best linear projection of xi (least squares of RMSD on xi, fitted
on the even frames, AUC on the odd ones). AUC near 1 (or 0) = separated, 0.5 = not. If no unfolded frame was
sampled, the separation is undefined and says so.

Misfolded (``--misfolded PDB``, or derived): frames within 0.2 nm C-alpha RMSD of a misfolded reference and more
than 0.3 nm from 5AWL. Without a PDB the reference is the medoid of the frames as compact as the folded ones
(heavy-atom Rg at most the folded frames' 95th percentile) but more than 0.3 nm from 5AWL (written to
``<out>/misfolded_reference_ca.pdb``); too few such frames (< 20) and the run says it sampled no misfolded state.
Printed: held-out AUCs folded/misfolded, misfolded/unfolded, folded/unfolded. Folding free energy: the last
iteration's reweighted folded (< 0.2 nm) vs unfolded (> 0.4 nm), printed only after at least 4 transitions between
them in its runs, else "not sampled".
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aesample.benchmarking import auc  # noqa: E402  (after the path line above)

PROFILES = {
    "smoke": {"loop.initial_md": 0.002, "loop.eabf_per_iteration": 0.001, "loop.max_iterations": 1,
              "md.report_interval": 10, "md.segment_steps": 500, "md.equilibration": 0.2,
              "training.max_epochs": 5, "output.plots": False},
    "cpu": {"loop.initial_md": 0.5, "loop.eabf_per_iteration": 0.5, "loop.max_iterations": 3,
            "md.report_interval": 250, "md.segment_steps": 25000},
    "gpu": {"loop.initial_md": 10.0, "loop.eabf_per_iteration": 10.0, "loop.max_iterations": 6,
            "md.report_interval": 500, "md.segment_steps": 250000},
}
FOLDED, UNFOLDED = 0.2, 0.4  # nm, C-alpha RMSD to 5AWL
MISFOLD_MIN = 0.3  # nm: a misfolded frame is at least this far from 5AWL
MIN_TRANSITIONS = 4  # folded <-> unfolded transitions before a folding free energy is printed


def hot_start(out: Path, ps: float, temperature: float = 600.0, seed: int = 11) -> Path:
    """Unbiased MD at ``temperature`` for ``ps`` from the folded structure; returns the last frame as a PDB."""
    import openmm
    from openmm import app

    from aesample.systems import build_system

    target = out / "hot_start.pdb"
    if target.exists():
        return target
    ms = build_system("chignolin")
    integrator = openmm.LangevinMiddleIntegrator(temperature, 1.0, 0.002)
    integrator.setRandomNumberSeed(seed)
    sim = app.Simulation(ms.topology, ms.system, integrator, openmm.Platform.getPlatformByName("CPU"))
    sim.context.setPositions(ms.positions)
    sim.minimizeEnergy()
    sim.context.setVelocitiesToTemperature(temperature, seed)
    t0 = time.perf_counter()
    sim.step(max(1, int(round(ps * 500))))
    pos = sim.context.getState(getPositions=True).getPositions()
    # cool briefly so the structure is not strained at 340 K
    integrator.setTemperature(340.0)
    sim.step(250)
    pos = sim.context.getState(getPositions=True).getPositions()
    out.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".pdb.tmp")
    with open(tmp, "w") as handle:
        app.PDBFile.writeFile(ms.topology, pos, handle)
    tmp.replace(target)
    import mdtraj

    from aesample.systems import systems_dir

    folded = mdtraj.load(str(systems_dir() / "chignolin_cln025_5awl.pdb"))
    hot = mdtraj.load(str(target))
    ca, ref_ca = hot.topology.select("name CA"), folded.topology.select("name CA")
    rmsd = float(mdtraj.rmsd(hot.atom_slice(ca), folded.atom_slice(ref_ca))[0])
    print(f"hot start: {ps:g} ps at {temperature:g} K in {time.perf_counter() - t0:.0f} s; "
          f"C-alpha RMSD to 5AWL {rmsd:.3f} nm -> {target}", flush=True)
    return target


def misfolded_reference(ca: "mdtraj.Trajectory", rmsd: np.ndarray, rg: np.ndarray, max_frames: int = 400,
                        min_frames: int = 20):
    """A misfolded reference from the sampled frames, when no PDB is given: the medoid (least mean C-alpha RMSD to
    the others) of the frames that are as compact as the folded ones (heavy-atom Rg at most the 95th percentile of
    the frames with RMSD < FOLDED) but clearly not native (RMSD to 5AWL > MISFOLD_MIN). ``ca``: C-alpha frames.
    Returns (index of the frame, number of candidates), or (None, candidates) when fewer than ``min_frames``."""
    import mdtraj

    folded = rmsd < FOLDED
    if not folded.any():
        return None, 0
    cand = np.flatnonzero((rg <= np.quantile(rg[folded], 0.95)) & (rmsd > MISFOLD_MIN))
    if len(cand) < min_frames:
        return None, int(len(cand))
    sub = cand[np.linspace(0, len(cand) - 1, min(max_frames, len(cand))).astype(int)]
    sl = ca[sub]
    mean = np.array([mdtraj.rmsd(sl, sl, i).mean() for i in range(len(sub))])
    return int(sub[int(np.argmin(mean))]), int(len(cand))


def heldout_auc(xi: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``positive`` along the least-squares linear projection of xi onto the label, fitted on the even
    frames and scored on the odd ones; NaN when a class has too few frames."""
    idx = np.arange(len(positive))
    train, test = idx[0::2], idx[1::2]
    if positive[train].sum() < 2 or (~positive[train]).sum() < 2 or len(test) < 2:
        return float("nan")
    a = np.hstack([xi[train], np.ones((len(train), 1))])
    coef, *_ = np.linalg.lstsq(a, positive[train].astype(float), rcond=None)
    return auc(np.hstack([xi[test], np.ones((len(test), 1))]) @ coef, positive[test])


def evaluate(run_dir: Path, misfolded_pdb: Path | None = None, out_dir: Path | None = None) -> dict:
    """Folded / misfolded / unfolded separation by the final CV over all frames of all iterations, and the last
    iteration's reweighted folding free energy when it crossed often enough."""
    import mdtraj

    from aesample import analysis, md
    from aesample.driver import LoopDriver
    from aesample.estimators import basin_visits, kT
    from aesample.export import compute_cv, load_cv
    from aesample.systems import systems_dir

    driver = LoopDriver.open(run_dir)
    history = driver.state.history
    if not history:
        raise SystemExit(f"{run_dir}: no finished iteration yet")
    last = max(h["iteration"] for h in history)
    cv, _ = load_cv(run_dir / f"iter_{last:03d}" / "cv.pt")
    folded = mdtraj.load(str(systems_dir() / "chignolin_cln025_5awl.pdb"))
    xs, rs, gs, ws, its, cas = [], [], [], [], [], []
    for k in range(last + 1):
        dirs = sorted(p for p in (run_dir / f"iter_{k:03d}").glob("md_*") if p.is_dir())
        results = [md.load_result(d) for d in dirs]
        # the loop's own frame weights: the walkers pooled (one CZAR free energy from all of them), uniform at 0
        pooled_w = (None if k == 0 else
                    md.PooledRuns(results).reweighting_weights(driver.config.eabf.estimator))
        start = 0
        for res in results:
            traj = res.load_trajectory(driver.system.mdtraj_topology)
            box = None if traj.unitcell_vectors is None else np.asarray(traj.unitcell_vectors, dtype=np.float64)
            xs.append(compute_cv(cv, traj.xyz.astype(np.float64), box=box))
            obs = analysis.chignolin_observables(traj, folded)
            rs.append(obs["rmsd_ca"])
            gs.append(obs["rg"])
            cas.append(traj.atom_slice(traj.topology.select("protein and name CA")))
            if pooled_w is None:  # normalised over the iteration's frames below, as the loop's uniform weights
                ws.append(np.ones(traj.n_frames))
            else:
                ws.append(pooled_w[start:start + traj.n_frames])
            start += traj.n_frames
            its.append(np.full(traj.n_frames, k))
        if pooled_w is None:
            for j in range(len(ws) - len(results), len(ws)):
                ws[j] = ws[j] / start
    xi, rmsd, rg, w, it = (np.concatenate(v) for v in (xs, rs, gs, ws, its))
    ca = mdtraj.join(cas)
    out = {"iteration": last, "frames": int(len(rmsd)), "rmsd_min": float(rmsd.min()), "rmsd_max": float(rmsd.max()),
           "n_folded": int((rmsd < FOLDED).sum()), "n_unfolded": int((rmsd > UNFOLDED).sum()),
           "cv_rmsd_score": analysis.regression_score(rmsd, xi, w) if len(rmsd) > xi.shape[1] + 1 else float("nan")}
    sel = (rmsd < FOLDED) | (rmsd > UNFOLDED)
    out["auc_heldout"] = heldout_auc(xi[sel], rmsd[sel] > UNFOLDED)
    print(f"\nchignolin separation by xi_{last} over {out['frames']} frames: C-alpha RMSD {out['rmsd_min']:.3f}-"
          f"{out['rmsd_max']:.3f} nm; {out['n_folded']} folded (< {FOLDED} nm), {out['n_unfolded']} unfolded "
          f"(> {UNFOLDED} nm)")
    print(f"  regression score of RMSD on xi (reweighted): {out['cv_rmsd_score']:.3f}")
    if np.isfinite(out["auc_heldout"]):
        verdict = "separates" if abs(out["auc_heldout"] - 0.5) >= 0.4 else "does not clearly separate"
        print(f"  held-out ROC AUC of folded vs unfolded along the linear projection of xi: {out['auc_heldout']:.3f} "
              f"-> the CV {verdict} folded from unfolded frames (criterion |AUC - 0.5| >= 0.4)")
    else:
        print("  no unfolded (or no folded) frames were sampled: the separation is undefined for this run")
    # misfolded: near a misfolded reference (a user's PDB, or the medoid of compact non-native frames)
    if misfolded_pdb is not None:
        ref = mdtraj.load(str(misfolded_pdb))
        ref_ca = ref.atom_slice(ref.topology.select("protein and name CA"))
        if ref_ca.n_atoms != ca.n_atoms:
            raise SystemExit(f"{misfolded_pdb}: {ref_ca.n_atoms} C-alpha atoms, the trajectory has {ca.n_atoms}")
        source = str(misfolded_pdb)
    else:
        i, n_cand = misfolded_reference(ca, rmsd, rg)
        out["misfolded_candidates"] = n_cand
        if i is None:
            ref_ca, source = None, None
            print(f"  misfolded: {n_cand} compact non-native frames (Rg within the folded frames' 95th percentile, "
                  f"RMSD to 5AWL > {MISFOLD_MIN} nm): too few to define a misfolded reference")
        else:
            ref_ca = ca[i]
            source = f"medoid of {n_cand} compact non-native frames (frame {i}, iteration {int(it[i])})"
            if out_dir is not None:
                ref_ca.save_pdb(str(out_dir / "misfolded_reference_ca.pdb"))
    if ref_ca is not None:
        rmsd_mis = mdtraj.rmsd(ca, ref_ca)
        mis = (rmsd_mis < FOLDED) & (rmsd > MISFOLD_MIN)
        unf = (rmsd > UNFOLDED) & (rmsd_mis > UNFOLDED)
        fol = rmsd < FOLDED
        ref_to_native = float(mdtraj.rmsd(ref_ca, folded.atom_slice(folded.topology.select("protein and name CA")))[0])
        out["misfolded"] = {
            "reference": source, "reference_rmsd_to_5awl": ref_to_native,
            "n_misfolded": int(mis.sum()), "n_unfolded_both": int(unf.sum()),
            "auc_folded_vs_misfolded": heldout_auc(xi[fol | mis], mis[fol | mis]),
            "auc_misfolded_vs_unfolded": heldout_auc(xi[mis | unf], unf[mis | unf]),
            "auc_folded_vs_unfolded": heldout_auc(xi[fol | unf], unf[fol | unf]),
        }
        m = out["misfolded"]
        print(f"  misfolded reference: {source}; its C-alpha RMSD to 5AWL {ref_to_native:.3f} nm")
        print(f"  {int(fol.sum())} folded, {m['n_misfolded']} misfolded (< {FOLDED} nm from the reference, > "
              f"{MISFOLD_MIN} nm from 5AWL), {m['n_unfolded_both']} unfolded (> {UNFOLDED} nm from both); held-out "
              f"AUC folded/misfolded {m['auc_folded_vs_misfolded']:.3f}, misfolded/unfolded "
              f"{m['auc_misfolded_vs_unfolded']:.3f}, folded/unfolded {m['auc_folded_vs_unfolded']:.3f}")
    # folding free energy of the last iteration: only with enough folded <-> unfolded transitions
    last_sel = it == last
    lab = np.where(rmsd[last_sel] < FOLDED, 0, np.where(rmsd[last_sel] > UNFOLDED, 1, -1))
    lengths = [len(i) for i in its if i[0] == last]  # the last iteration's runs, frames each
    # visits that start in another basin than the one before, run by run (a visit never spans two runs)
    transitions = sum(max(0, len(basin_visits(part)[1]) - 1) for part in np.split(lab, np.cumsum(lengths)[:-1]))
    wl = w[last_sel]
    pf, pu = wl[lab == 0].sum(), wl[lab == 1].sum()
    out["folding"] = {"transitions": transitions, "p_folded": float(pf / wl.sum()) if wl.sum() > 0 else float("nan")}
    if transitions >= MIN_TRANSITIONS and pf > 0 and pu > 0:
        out["folding"]["delta_g"] = float(-kT(driver.system.temperature) * np.log(pf / pu))
        print(f"  folding free energy (iteration {last}, reweighted, folded < {FOLDED} vs unfolded > {UNFOLDED} nm): "
              f"{out['folding']['delta_g']:.2f} kJ/mol from {transitions} transitions")
    else:
        print(f"  folding free energy: not sampled (iteration {last}: {transitions} folded <-> unfolded transitions, "
              f"fewer than {MIN_TRANSITIONS})")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="benchmark folder (loop in <out>/loop)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--hot-start-ps", type=float, default=0.0, help="unfolding run before the loop, ps")
    p.add_argument("--hot-start-temperature", type=float, default=600.0,
                   help="temperature of the unfolding run, K (default 600)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--misfolded", type=Path, help="misfolded reference PDB (default: the medoid of the run's compact "
                   "non-native frames)")
    a = p.parse_args(argv)
    from aesample.config import apply_overrides, config_from_dict, effective_config, save_config
    from aesample.driver import LoopDriver

    run_dir = a.out / "loop"
    t0 = time.perf_counter()
    if not a.report_only:
        if a.resume:
            driver = LoopDriver.open(run_dir)
        else:
            sets = ["system.name=chignolin"] + [f"{k}={v}" for k, v in PROFILES[a.profile].items()]
            if a.hot_start_ps > 0:
                sets.append(f"loop.initial_structures=[{hot_start(a.out, a.hot_start_ps, a.hot_start_temperature)}]")
            config = effective_config(apply_overrides(config_from_dict({}), sets + a.overrides))
            a.out.mkdir(parents=True, exist_ok=True)
            save_config(config, a.out / "loop_config.yaml")
            driver = LoopDriver.create(config, run_dir)
        driver.run(progress=not a.quiet)
        print(f"loop wall time (this process): {time.perf_counter() - t0:.0f} s")
    driver = LoopDriver.open(run_dir)
    from aesample.loopstages import format_metrics

    for m in driver.state.history:
        print(format_metrics(m) + (f" R2(RMSD~xi)={m['cv_rmsd_score']:.3f}" if m.get("cv_rmsd_score") is not None else ""))
    print(f"finished: {driver.state.finished}, converged: {driver.state.converged}")
    result = evaluate(run_dir, a.misfolded, a.out)
    (a.out / "chignolin.json").write_text(json.dumps({"history": driver.state.history, "separation": result},
                                                     indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
