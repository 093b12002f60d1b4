"""aesample eabf: a plain eABF run on standard CVs (or an exported CV model).

examples:
  aesample eabf --system alanine-dipeptide --cv phi --ns 2 --out runs/phi
  aesample eabf --system alanine-dipeptide --cv phi,psi --ns 5 --out runs/phipsi --bins 36
  aesample eabf --system chignolin --cv distance:0,150 --grid-min 0.3 --grid-max 1.5 --ns 1 --out runs/d
  aesample eabf --system alanine-dipeptide --cv-model iter_001/cv.pt --grid-min -1 --grid-max 1 --out runs/ae
  aesample eabf --system alanine-dipeptide --cv psi --start c7ax.pdb --out runs/psi_c7ax

Writes into --out: COLVAR (time in ps, CV and lambda in the CV's units), the grids
eabf.{grad,count,pmf,czar.grad,czar.pmf,zcount}, trajectory.dcd (all frames, molecule atoms)
with topology.pdb beside it, per-segment trajectories in traj/ and checkpoints in checkpoint/;
then prints a summary of the CZAR free energy. --out must be new or empty; --resume continues
the run already there.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..config import EABFConfig, ExecutionConfig, MDConfig, SystemConfig

# Every default below is the configuration's (aesample.config), so `aesample eabf` and the loop agree.
_MD, _EABF, _SYSTEM, _EXEC = MDConfig(), EABFConfig(), SystemConfig(), ExecutionConfig()


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("eabf", help="plain eABF run on standard CVs (phi, psi, dihedral:..., distance:...)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--system", default="alanine-dipeptide", help="built-in system name (see `aesample systems`)")
    cvg = p.add_mutually_exclusive_group(required=True)
    cvg.add_argument("--cv", help="CV spec: phi | psi | phi,psi | dihedral:i,j,k,l | distance:i,j (';' joins kinds)")
    cvg.add_argument("--cv-model", type=Path, help="exported TorchScript CV (.pt, metadata .json beside it)")
    p.add_argument("--start", type=Path,
                   help="starting structure: a PDB file with the system's atoms in its order (a solute-only file "
                        "for a solvated system keeps the built solvent); default: the built structure")
    p.add_argument("--ns", type=float, default=1.0, help="production length, ns (default 1)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--platform", default=_SYSTEM.platform, help="auto | Reference | CPU | CUDA | OpenCL")
    p.add_argument("--bins", type=int, nargs="+",
                   help="ABF bins per CV component (default: angles 72 in 1D, 36 in 2D/3D; 50 otherwise: "
                   "aesample.config.STANDARD_CV_BINS)")
    p.add_argument("--czar-bins", type=int, nargs="+",
                   help="CZAR bins per CV component on xi, same range (default: the ABF bins times "
                   "ceil(bin width / coupling width sqrt(kT/kappa)))")
    p.add_argument("--czar-min-count", type=int, default=_EABF.czar_min_count,
                   help=f"samples a CZAR bin needs for a gradient estimate (default {_EABF.czar_min_count})")
    p.add_argument("--grid-min", type=float, nargs="+", help="grid lower bound(s), CV units (angles: -pi)")
    p.add_argument("--grid-max", type=float, nargs="+", help="grid upper bound(s), CV units (angles: +pi)")
    p.add_argument("--kappa", type=float, nargs="+",
                   help="coupling constant(s), kJ/mol/CVunit^2 (default: kT / bin width^2)")
    p.add_argument("--full-samples", type=int,
                   help="samples per bin for the full bias (default 500 in 1D, 100 in 2D/3D)")
    p.add_argument("--extended-period", type=float, default=_EABF.extended_period,
                   help=f"lambda oscillator period, ps (default {_EABF.extended_period})")
    p.add_argument("--temperature", type=float, help="K (default: the system's)")
    p.add_argument("--timestep", type=float, default=_MD.timestep, help=f"fs (default {_MD.timestep:g})")
    p.add_argument("--friction", type=float, default=_MD.friction, help=f"1/ps (default {_MD.friction:g})")
    p.add_argument("--report-interval", type=int, default=_MD.report_interval,
                   help=f"steps between frames/COLVAR rows (default {_MD.report_interval})")
    p.add_argument("--segment-steps", type=int, default=_MD.segment_steps,
                   help=f"steps per checkpointed segment (default {_MD.segment_steps})")
    p.add_argument("--equilibration", type=float, default=_MD.equilibration,
                   help=f"equilibration before sampling, ps (default {_MD.equilibration:g})")
    p.add_argument("--seed", type=int, default=_MD.seed, help=f"random seed (default {_MD.seed})")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--cuda-graphs", choices=["auto", "on", "off"], default=_EABF.cuda_graphs,
                   help=f"capture the eABF force in a CUDA graph (default {_EABF.cuda_graphs}: on CUDA when the CV "
                   "allows it)")
    p.add_argument("--close-periodic-bias", action=argparse.BooleanOptionalAction,
                   default=_EABF.close_periodic_bias,
                   help="around a periodic CV (a torsion), apply the bias minus its mean over the ring once every "
                   "bin of the ring was visited, so it cannot drive a rotation (default: on)")
    p.add_argument("--bias-only-where-reached", action=argparse.BooleanOptionalAction,
                   default=_EABF.bias_only_where_reached,
                   help="along a non-periodic CV, apply the bias of a lambda bin only once the CV itself was sampled "
                   "there, so lambda cannot run off past a bounded CV (default: on)")
    p.add_argument("--smooth-bias", action=argparse.BooleanOptionalAction, default=_EABF.smooth_bias,
                   help="apply the bias as the gradient of the interpolated integral of the per-bin mean forces "
                   "(conservative; for 2D/3D CVs) instead of each bin's mean (default: off)")
    p.add_argument("--threads", type=int, default=_EXEC.threads,
                   help="CPU cores for OpenMM's CPU platform (default: all this process may use); torch uses one")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def _per_dim(values: Optional[List[float]], d: int, name: str, default) -> list:
    if values is None:
        return list(default)
    if len(values) == 1:
        return list(values) * d
    if len(values) != d:
        raise ValueError(f"--{name}: give 1 or {d} values (one per CV component), got {len(values)}")
    return list(values)


def main(args: argparse.Namespace) -> int:
    _check_arguments(args)  # before the heavy imports: a typo costs no wait
    from .. import cvs
    from ..config import PS_PER_FS, PS_PER_NS, standard_cv_defaults
    from ..eabf import coupled_czar_bins
    from ..md import EABFSettings, MDSettings, run_eabf
    from ..systems import build_system
    from ..threads import plan_threads

    ms = build_system(args.system)
    positions = None if args.start is None else ms.positions_from_pdb(args.start, what="--start")
    if args.cv_model is not None:
        from ..export import load_cv

        cv, meta = load_cv(args.cv_model)
        d = int(getattr(cv, "cv_dim", meta.get("cv_dim", 1)))
        periodic = [bool(v) for v in meta.get("periodic", [False] * d)]
        gmin_default = meta.get("grid_min")
        gmax_default = meta.get("grid_max")
        label = str(args.cv_model)
        units = "CV units"
    else:
        cv = cvs.parse_cv_spec(args.cv, ms.mdtraj_topology)
        d = int(cv.cv_dim)
        periodic = [bool(v) for v in cv.periodic]
        gmin_default = [-math.pi if p else None for p in periodic]
        gmax_default = [math.pi if p else None for p in periodic]
        label = args.cv
        units = "rad" if all(periodic) else ("nm" if not any(periodic) else "rad|nm")
    gmin = _per_dim(args.grid_min, d, "grid-min", gmin_default if gmin_default is not None else [None] * d)
    gmax = _per_dim(args.grid_max, d, "grid-max", gmax_default if gmax_default is not None else [None] * d)
    for i in range(d):
        if gmin[i] is None or gmax[i] is None:
            raise ValueError(f"--grid-min/--grid-max: component {i + 1} of {label!r} is not an angle; "
                             "give its grid bounds explicitly")
    temperature = float(args.temperature if args.temperature is not None else ms.temperature)
    bins = _per_dim(args.bins, d, "bins", standard_cv_defaults(periodic, gmin, gmax, temperature)["bins"])
    defaults = standard_cv_defaults(periodic, gmin, gmax, temperature, bins=bins)
    kappa = _per_dim(args.kappa, d, "kappa", defaults["kappa"])
    czar_bins = _per_dim(args.czar_bins, d, "czar-bins", coupled_czar_bins(bins, gmin, gmax, kappa, temperature))
    full_samples = args.full_samples if args.full_samples is not None else defaults["full_samples"]
    dt_ps = args.timestep * PS_PER_FS
    n_steps = int(round(args.ns * PS_PER_NS / dt_ps))
    rep = int(args.report_interval)
    seg = max(rep, (int(args.segment_steps) // rep) * rep)
    es = EABFSettings(grid_min=gmin, grid_max=gmax, bins=bins, kappa=kappa, periodic=periodic,
                      extended_period=args.extended_period, full_samples=full_samples, czar_bins=czar_bins,
                      czar_min_count=args.czar_min_count, cuda_graphs=args.cuda_graphs,
                      close_periodic_bias=args.close_periodic_bias,
                      bias_only_where_reached=args.bias_only_where_reached, smooth_bias=args.smooth_bias)
    md = MDSettings(temperature=temperature, timestep=dt_ps, friction=args.friction, platform=args.platform,
                    report_interval=rep, segment_steps=seg, equilibration_steps=int(round(args.equilibration / dt_ps)),
                    seed=args.seed, progress=not args.no_progress, cpu_threads=plan_threads(args.threads).openmm)
    print(f"eABF on {ms.name} along {label} (d={d}): grid {gmin} .. {gmax}, bins {bins} (CZAR {czar_bins}), "
          f"kappa {[round(k, 1) for k in kappa]} kJ/mol/{units}^2, {args.ns} ns = {n_steps} steps, T = {temperature} K")
    created = not args.out.exists()
    try:
        res = run_eabf(ms, cv, es, md, args.out, n_steps, resume=args.resume, cv_units=units, positions=positions)
    except BaseException:
        if created and not (args.out / "checkpoint.json").exists():  # nothing worth keeping: leave no trace
            import shutil

            shutil.rmtree(args.out, ignore_errors=True)
        raise
    _write_joined_trajectory(res, ms)
    print(f"done: {res.n_steps} steps on {res.platform}, {res.ns_per_day:.1f} ns/day, "
          f"{res.state.n_samples} samples; outputs in {res.out_dir} (trajectory.dcd with topology.pdb, COLVAR, eabf.*)")
    _summary(res, d)
    return 0


def _check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad numbers and an occupied --out before anything is built, printed or written."""
    positive = {"ns": args.ns, "timestep": args.timestep, "extended-period": args.extended_period,
                "report-interval": args.report_interval, "segment-steps": args.segment_steps,
                "full-samples": args.full_samples}
    for name, value in positive.items():
        if value is not None and not value > 0:  # None: a default chosen later (full-samples by dimension)
            raise ValueError(f"--{name}: must be > 0, got {value}")
    for name, value in {"friction": args.friction, "equilibration": args.equilibration}.items():
        if value < 0:
            raise ValueError(f"--{name}: must be >= 0, got {value}")
    if args.temperature is not None and not args.temperature > 0:
        raise ValueError(f"--temperature: must be > 0, got {args.temperature}")
    if args.bins is not None and min(args.bins) < 2:
        raise ValueError(f"--bins: must be >= 2, got {args.bins}")
    if args.czar_bins is not None and min(args.czar_bins) < 2:
        raise ValueError(f"--czar-bins: must be >= 2, got {args.czar_bins}")
    if args.czar_min_count < 1:
        raise ValueError(f"--czar-min-count: must be >= 1, got {args.czar_min_count}")
    if args.kappa is not None and min(args.kappa) <= 0:
        raise ValueError(f"--kappa: must be > 0, got {args.kappa}")
    if args.start is not None and not args.start.is_file():
        raise ValueError(f"--start {args.start}: no such file")
    out = args.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory")
    if args.resume:
        if not (out / "checkpoint.json").is_file():
            raise ValueError(f"--resume: {out} holds no eABF run to continue (no checkpoint.json)")
    elif out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out}: directory exists and is not empty; choose a new one, or add --resume to "
                         "continue the eABF run in it")


def _write_joined_trajectory(res, ms) -> None:
    """``trajectory.<fmt>`` (every segment joined) and ``topology.pdb`` (the molecule's atoms) in the run folder."""
    from ..io import atomic_path
    from ..md import load_result

    traj = load_result(res.out_dir).load_trajectory(ms.mdtraj_topology)
    with atomic_path(res.out_dir / "topology.pdb") as tmp:
        traj[0].save_pdb(str(tmp), force_overwrite=True)
    fmt = res.trajectories[0].suffix.lstrip(".") if res.trajectories else "dcd"
    with atomic_path(res.out_dir / f"trajectory.{fmt}") as tmp:
        getattr(traj, f"save_{fmt}")(str(tmp), force_overwrite=True)


def _summary(res, d: int) -> None:
    pmf = res.grids.get("czar.pmf")
    if pmf is None:
        return
    from ..estimators import kT as kT_of

    st = res.state
    centers = st.z_centers()
    kT = kT_of(res.temperature)
    if d == 1:
        print("CZAR free energy (kJ/mol) along the CV, every few bins (nan: bin never visited, no estimate):")
        step = max(1, len(centers[0]) // 24)
        for c, f, n in list(zip(centers[0], pmf, st.zcount))[::step]:
            bar = "" if not np.isfinite(f) else "#" * int(min(60, f / max(kT, 1e-9) * 4))
            print(f"  {c:9.4f}  {f:8.2f}  n={int(n):7d}  {bar}")
    else:
        finite = np.isfinite(pmf)
        print(f"CZAR free energy: {finite.sum()} of {pmf.size} bins estimated, max {np.nanmax(pmf):.1f} kJ/mol")
        # list local minima (basins)
        from scipy.ndimage import minimum_filter

        filled = np.where(finite, pmf, np.inf)
        mins = (filled == minimum_filter(filled, size=5, mode="wrap" if all(st.periodic) else "nearest")) & finite
        for idx in sorted(zip(*np.nonzero(mins)), key=lambda ij: filled[ij])[:6]:
            print("  minimum at (" + ", ".join(f"{centers[k][idx[k]]:.2f}" for k in range(d))
                  + f"): {pmf[idx]:.2f} kJ/mol")
