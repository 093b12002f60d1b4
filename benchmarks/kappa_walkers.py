"""Issue 14 item 7: eABF walkers along one fixed learned CV at a chosen coupling kappa and MTS interval.

    python benchmarks/kappa_walkers.py --cv runs/loop0/iter_000/cv.pt --frames runs/loop0/iter_000 \\
        --kappa 300 --seed 11 --ns 1 --out runs/k300_s11 [--cv-interval auto] [--timestep 0.001 --report-interval 200]
        [--initial-state pooled.npz] [--resume]

``--timestep`` (ps) changes the step (keep the frames per ns with ``--report-interval``); ``--initial-state``
starts the bias from saved accumulators (an ``EABFState`` .npz, e.g. ``md.PooledRuns(...).state.save(path)``), so
that the walker samples under a bias already built; its own samples are the final minus the initial accumulators.

The loop's eABF settings as `aesample eabf` runs them in learned_cv_walkers.py (30 bins on [-1.5, 1.5],
fullSamples 100, extended period 0.2 ps, report interval 100, 2 fs, CZAR bins no wider than the coupling width),
the walls scaled with kappa as the loop does (10 kappa), started from the system's built structure (C7eq).
`aesample eabf` has no MTS flag, so this script calls `aesample.md.run_eabf` itself with ``MDSettings.cv_interval``.

``--cv-interval auto`` takes the largest interval in (1, 2, 4, 5) that the loop's own limits allow for this kappa:
the CV spring's period on the atoms, 2 pi / sqrt(kappa * stiffness) (stiffness from `aesample.export.cv_stiffness`
over up to 200 frames of ``--frames``/trajectory.dcd), spans >= 8 outer steps (loopstages.MIN_STEPS_PER_CV_PERIOD)
and the outer step is at most a tenth of the extended system's shortest period (the extended period / sqrt(11)
with walls of 10 kappa: 6 fs here, so 2 at most with report interval 100). It prints the stiffness, the spring
period and the interval chosen. Read the walkers back with learned_cv_walkers.py.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MIN_STEPS_PER_CV_PERIOD = 8  # as aesample.loopstages


def spring_period(cv, frames_dir: Path, system, kappa: float) -> tuple[float, float]:
    """(stiffness, period of the CV spring on the atoms in ps) over up to 200 frames of frames_dir."""
    import mdtraj
    from openmm import unit

    from aesample.export import cv_stiffness

    traj = mdtraj.load(str(frames_dir / "trajectory.dcd"), top=str(frames_dir / "topology.pdb"))
    frames = traj.xyz[:: max(1, traj.n_frames // 200)].astype(np.float64)
    sysm = system.system
    masses = np.array([sysm.getParticleMass(i).value_in_unit(unit.dalton) for i in range(traj.n_atoms)])
    stiff = cv_stiffness(cv, frames, masses, None)
    return stiff, 2 * math.pi / math.sqrt(kappa * stiff)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cv", type=Path, required=True)
    ap.add_argument("--frames", type=Path, required=True, help="folder with trajectory.dcd + topology.pdb")
    ap.add_argument("--kappa", type=float, required=True)
    ap.add_argument("--cv-interval", default="auto")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--ns", type=float, default=1.0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--report-interval", type=int, default=100, help="steps between COLVAR rows and frames")
    ap.add_argument("--timestep", type=float, default=0.002, help="integration time step, ps (the loop's 0.002)")
    ap.add_argument("--initial-state", type=Path, help="eABF accumulators (EABFState .npz) to start the bias from")
    ap.add_argument("--resume", action="store_true", help="continue the walker in --out from its last checkpoint "
                    "(same settings; the reach gate as the run started, see run.json)")
    a = ap.parse_args()

    from aesample.eabf import EABFState, coupled_czar_bins
    from aesample.export import load_cv
    from aesample.md import EABFSettings, MDSettings, run_eabf
    from aesample.systems import build_system

    ms = build_system("alanine-dipeptide")
    cv, meta = load_cv(a.cv)
    d = int(meta.get("cv_dim", 1))
    dt, period, report = a.timestep, 0.2, a.report_interval
    seg = report * max(1, round(100.0 / dt / report))  # a checkpoint every ~0.1 ns (50000 steps of 2 fs)
    stiff, t_cv = spring_period(cv, a.frames, ms, a.kappa)
    if a.cv_interval == "auto":
        # the walls (10 kappa) shorten the extended period by sqrt(11); md.make_integrator wants outer <= that / 10
        ok = [k for k in (1, 2, 4, 5) if MIN_STEPS_PER_CV_PERIOD * k * dt <= t_cv and k * dt <= period / math.sqrt(11) / 10]
        k_int = max(ok) if ok else 1
    else:
        k_int = int(a.cv_interval)
    print(f"kappa {a.kappa}: stiffness {stiff:.4g} /(nm^2 amu), CV spring period {t_cv * 1000:.1f} fs, "
          f"cv_interval {k_int} (outer step {k_int * dt * 1000:.0f} fs)", flush=True)
    gmin, gmax, bins, T = [-1.5] * d, [1.5] * d, [30] * d, float(ms.temperature)
    es = EABFSettings(grid_min=gmin, grid_max=gmax, bins=bins, kappa=[a.kappa] * d, periodic=[False] * d,
                      extended_period=period, full_samples=100, wall_kappa=[10 * a.kappa] * d,
                      czar_bins=coupled_czar_bins(bins, gmin, gmax, [a.kappa] * d, T))
    md = MDSettings(temperature=T, timestep=dt, friction=1.0, report_interval=report, segment_steps=seg,
                    equilibration_steps=int(round(10.0 / dt)), seed=a.seed, progress=False, cv_interval=k_int)
    t0 = time.time()
    initial = None if a.initial_state is None else EABFState.load(a.initial_state)
    res = run_eabf(ms, cv, es, md, a.out, int(round(a.ns * 1000 / dt)), initial_state=initial, resume=a.resume)
    info = {"kappa": a.kappa, "cv_interval": k_int, "stiffness": stiff, "cv_period_fs": t_cv * 1000,
            "czar_bins": es.czar_bins, "timestep": dt,
            "initial_state": None if a.initial_state is None else str(a.initial_state), "seed": a.seed, "ns": a.ns,
            "wall_s": time.time() - t0,
            "ns_per_day": res.ns_per_day}
    (a.out / "kappa_walker.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
