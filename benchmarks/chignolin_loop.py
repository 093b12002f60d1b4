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
final CV xi (2D): the regression score of RMSD on xi (weighted, per-iteration reweighting weights), and the
ROC AUC of the folded/unfolded split along the best linear projection of xi (least squares of RMSD on xi, fitted
on the even frames, AUC on the odd ones). AUC near 1 (or 0) = separated, 0.5 = not. If no unfolded frame was
sampled, the separation is undefined and says so.
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


def evaluate(run_dir: Path) -> dict:
    """Folded/unfolded separation by the final CV over all frames of all iterations."""
    import mdtraj

    from aesample import analysis, md
    from aesample.driver import LoopDriver
    from aesample.export import compute_cv, load_cv
    from aesample.systems import systems_dir

    driver = LoopDriver.open(run_dir)
    history = driver.state.history
    if not history:
        raise SystemExit(f"{run_dir}: no finished iteration yet")
    last = max(h["iteration"] for h in history)
    cv, _ = load_cv(run_dir / f"iter_{last:03d}" / "cv.pt")
    folded = mdtraj.load(str(systems_dir() / "chignolin_cln025_5awl.pdb"))
    xs, rs, ws = [], [], []
    for k in range(last + 1):
        dirs = sorted(p for p in (run_dir / f"iter_{k:03d}").glob("md_*") if p.is_dir())
        for d in dirs:
            res = md.load_result(d)
            traj = res.load_trajectory(driver.system.mdtraj_topology)
            box = None if traj.unitcell_vectors is None else np.asarray(traj.unitcell_vectors, dtype=np.float64)
            xs.append(compute_cv(cv, traj.xyz.astype(np.float64), box=box))
            rs.append(analysis.chignolin_observables(traj, folded)["rmsd_ca"])
            w = (np.full(traj.n_frames, 1.0 / traj.n_frames) if k == 0
                 else res.reweighting_weights(driver.config.eabf.estimator))
            ws.append(w / w.sum() / len(dirs))
    xi, rmsd, w = np.concatenate(xs), np.concatenate(rs), np.concatenate(ws)
    out = {"iteration": last, "frames": int(len(rmsd)), "rmsd_min": float(rmsd.min()), "rmsd_max": float(rmsd.max()),
           "n_folded": int((rmsd < FOLDED).sum()), "n_unfolded": int((rmsd > UNFOLDED).sum()),
           "cv_rmsd_score": analysis.regression_score(rmsd, xi, w) if len(rmsd) > xi.shape[1] + 1 else float("nan")}
    sel = (rmsd < FOLDED) | (rmsd > UNFOLDED)
    idx = np.flatnonzero(sel)
    train, test = idx[0::2], idx[1::2]
    if out["n_folded"] and out["n_unfolded"] and len(train) > 3 and len(test) > 1:
        a = np.hstack([xi[train], np.ones((len(train), 1))])
        coef, *_ = np.linalg.lstsq(a, rmsd[train], rcond=None)
        proj = np.hstack([xi[test], np.ones((len(test), 1))]) @ coef
        out["auc_heldout"] = auc(proj, rmsd[test] > UNFOLDED)
    else:
        out["auc_heldout"] = float("nan")
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
    result = evaluate(run_dir)
    (a.out / "chignolin.json").write_text(json.dumps({"history": driver.state.history, "separation": result},
                                                     indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
