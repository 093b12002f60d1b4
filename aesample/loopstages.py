"""The three stages of one loop iteration (MD, training, analysis), as used by :mod:`aesample.driver`.

Each stage takes the run's :class:`~aesample.runlayout.RunLayout` (directory, configuration, system), reads what
earlier stages wrote in the run directory and writes its own outputs atomically, so re-running a stage after a
crash gives the same result. Nothing here imports the driver.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Optional

import mdtraj
import numpy as np
import torch
from openmm import unit

from . import analysis, execution, md
from .config import PS_PER_NS
from .estimators import kT, reweighted_free_energy
from .export import compute_cv, cv_stiffness, export_cv, load_cv
from .features import AlignedPositions, spanning_tree_parents
from .hiddenbarrier import hidden_barrier
from .slowsplit import slow_split
from .io import atomic_path, atomic_write_json
from .md import EABFSettings, MDSettings
from .models import ModelSpec
from .runlayout import RunLayout
from .selection import select_atoms
from .sharedbias import SharedBias
from .threads import apply_torch_threads, plan_threads
from .verdict import convergence_blockers
from .training import TrainingOptions, fit_autoencoder, fit_cv_scaling, save_history

log = logging.getLogger("aesample")

__all__ = ["run_md_stage", "run_train_stage", "run_analyse_stage", "format_metrics", "md_progress", "preflight",
           "write_iteration_trajectory"]

def _kT(run: RunLayout) -> float:
    return kT(run.config.system.temperature)


def _steps(ns: float, md) -> int:
    """Number of MD steps for ``ns`` with the ``md`` section's timestep, rounded up to a whole number of report
    intervals."""
    steps = md.steps(ns * PS_PER_NS)
    return max(md.report_interval, int(math.ceil(steps / md.report_interval)) * md.report_interval)


# ---------------------------------------------------------------------------------- MD
def _starting_structures(run: RunLayout) -> list[np.ndarray]:
    """Positions (nm) of every starting structure of iteration 0, checked against the system."""
    ms = run.system
    return [ms.positions] + [ms.positions_from_pdb(path, what="loop.initial_structures")
                             for path in run.config.loop.initial_structures]


def check_finite_energy(ms, positions: np.ndarray, source: str) -> None:
    """Raise a ValueError naming ``source`` when the potential energy at ``positions`` is not finite."""
    import openmm

    context = openmm.Context(ms.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    if ms.box is not None:
        context.setPeriodicBoxVectors(*ms.box)
    context.setPositions(positions)
    energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    if not np.isfinite(energy):
        raise ValueError(f"{source}: potential energy of the starting structure is not finite ({energy}); "
                         "check for overlapping atoms or missing coordinates")


def preflight(config, system) -> None:
    """Check, before any MD, what later stages would only find out after it: the CV atom selection, the starting
    structures (readable, the system's atom count, finite energy) and settings that depend on the system.

    Raises ValueError naming the setting (exit code 2 on the command line).
    """
    from types import SimpleNamespace


    indices = select_atoms(system.mdtraj_topology, config.cv.selection, what="cv.selection")
    if len(indices) < 3:
        raise ValueError(f"cv.selection: {config.cv.selection!r} selects {len(indices)} atom(s); the CV aligns the "
                         "selected atoms onto a reference and needs at least 3")
    view = SimpleNamespace(system=system, config=config)
    starts = _starting_structures(view)
    sources = [str(system.source)] + [str(p) for p in config.loop.initial_structures]
    for start, source in zip(starts, sources):
        check_finite_energy(system, start, source)


def iteration_trajectory_path(run: RunLayout, k: int) -> Path:
    """``iter_NNN/trajectory.dcd`` (or ``.xtc``): iteration ``k``'s frames, every run joined in run order."""
    return run.iteration_dir(k) / f"trajectory.{run.config.output.trajectory_format}"


def write_iteration_trajectory(run: RunLayout, k: int) -> Path:
    """Join iteration ``k``'s trajectory segments (``md_J/traj/seg_*``, J = 0, 1, ... in order) into one file and
    write the molecule's topology beside it (``topology.pdb``, the atoms PDBFixer added included), so that
    ``mdtraj.load("iter_NNN/trajectory.dcd", top="iter_NNN/topology.pdb")`` gives every frame of the iteration in
    the order of its weights (``weights.npy`` starts with them). Both files are written atomically; the segments
    stay (resume and the loop read them)."""
    top = run.system.mdtraj_topology
    trajs = [md.load_result(d).load_trajectory(top) for d in _md_dirs(run, k)]
    traj = mdtraj.join(trajs) if len(trajs) > 1 else trajs[0]
    out = run.iteration_dir(k)
    with atomic_path(out / "topology.pdb") as tmp:
        traj[0].save_pdb(str(tmp), force_overwrite=True)
    path = iteration_trajectory_path(run, k)
    with atomic_path(path) as tmp:
        getattr(traj, f"save_{run.config.output.trajectory_format}")(str(tmp), force_overwrite=True)
    return path


def _md_dirs(run: RunLayout, k: int) -> list[Path]:
    """Iteration 0: one unbiased run per starting structure; k >= 1: one eABF run per walker."""
    out = run.iteration_dir(k)
    n = len(run.config.loop.initial_structures) + 1 if k == 0 else run.config.loop.walkers
    return [out / f"md_{j}" for j in range(n)]


def _md_settings(run: RunLayout, seed_offset: int):
    return MDSettings.from_config(run.config, seed_offset)


# The fastest oscillation the CV spring adds to the atoms must span at least this many (outer) time steps.
MIN_STEPS_PER_CV_PERIOD = 8


def coupling_constant(run: RunLayout, k: int, cv) -> tuple[float, float]:
    """(kappa used by iteration k's eABF, the largest kappa the time step allows for this CV).

    ``eabf.kappa`` is capped at ``(2 pi / (MIN_STEPS_PER_CV_PERIOD * outer step))^2 / stiffness``, the stiffness
    (:func:`aesample.export.cv_stiffness`) taken over up to 200 of the frames the CV was trained on: a CV learned
    from a narrow sample stretches it onto the scaled range and can be so steep that the configured spring would
    blow the system up. Deterministic (files only), so a resume recomputes the same value.
    """
    cfg = run.config
    traj, _, _ = _frames(run, k - 1)
    frames = traj.xyz[:: max(1, traj.n_frames // 200)].astype(np.float64)
    box = _box(traj)
    if box is not None:
        box = box[:: max(1, traj.n_frames // 200)]
    system = run.system.system
    masses = np.array([system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(traj.n_atoms)])
    stiffness = cv_stiffness(cv, frames, masses, box)
    outer = cfg.md.timestep_ps * cfg.md.cv_interval  # ps
    kappa_max = (2 * np.pi / (MIN_STEPS_PER_CV_PERIOD * outer)) ** 2 / max(stiffness, 1e-300)
    return min(cfg.eabf.kappa, kappa_max), kappa_max


def _eabf_settings(run: RunLayout, d: int, kappa: Optional[float] = None):
    return EABFSettings.from_config(run.config, d, kappa)


def run_md_stage(run: RunLayout, k: int, progress: bool = True) -> None:
    """Iteration 0: unbiased MD from each starting structure; k >= 1: eABF along xi_{k-1}."""
    cfg = run.config
    dirs = _md_dirs(run, k)
    done_before = sum(md.steps_done(d) for d in dirs)
    t0 = time.perf_counter()
    _run_md_runs(run, k, dirs, progress)
    # Throughput of this process's share of the stage (a resumed stage counts only what it ran).
    steps = sum(md.steps_done(d) for d in dirs)
    ns = cfg.md.ns(steps)
    ran_ns = cfg.md.ns(steps - done_before)
    seconds = time.perf_counter() - t0
    atomic_write_json(run.iteration_dir(k) / "md_timing.json", {
        "ns": ns, "ns_this_process": ran_ns, "seconds": seconds,
        "ns_per_day": ran_ns / seconds * 86400.0 if ran_ns > 0 and seconds > 0 else None,
    })


def _run_md_runs(run: RunLayout, k: int, dirs: list[Path], progress: bool) -> None:
    cfg = run.config
    if k == 0:
        steps = _steps(cfg.loop.initial_md, cfg.md)
        starts = _starting_structures(run)
        sources = [str(run.system.source)] + [str(p) for p in cfg.loop.initial_structures]
        for start, source in zip(starts, sources):
            check_finite_energy(run.system, start, source)
        for j, (start, out) in enumerate(zip(starts, dirs)):
            md.run_md(
                run.system, _md_settings(run, 1000 * j), out, steps, positions=start,
                progress=progress, description=f"iter 0 MD {j}", resume=True, log=log.info,
            )
        return
    cv, _ = load_cv(run.iteration_dir(k - 1) / "cv.pt")
    kappa, kappa_max = coupling_constant(run, k, cv)
    if kappa < cfg.eabf.kappa:
        log.warning("iteration %d: eabf.kappa %.4g capped at %.4g: the CV is steep enough that the configured spring "
                    "would oscillate faster than %d time steps of %.2g fs", k, cfg.eabf.kappa, kappa,
                    MIN_STEPS_PER_CV_PERIOD, cfg.md.timestep * cfg.md.cv_interval)
    processes = execution.walker_slots(len(dirs), cfg.loop.walker_processes)
    ex = cfg.execution
    if processes == 1 and ex.scheduler is None and ex.jobqueue is None:
        for j in range(len(dirs)):
            run_eabf_walker(run, k, j, kappa, progress=progress)
        return
    _run_walkers_on_cluster(run, k, kappa, processes, progress)


def run_eabf_walker(run: RunLayout, k: int, j: int, kappa: float, progress: bool = True,
                    threads: Optional[int] = None, platform_properties: Optional[dict] = None) -> None:
    """eABF walker ``j`` of iteration ``k`` along xi_{k-1} (resumes from its checkpoint).

    It starts from the final structure of run ``j mod n`` of iteration k-1 and its seed is ``md.seed + 1000 k + j``
    (walker 0 keeps the single-walker seed). ``threads``: CPU-platform threads (default: all of
    ``execution.threads``, for a walker that runs alone); ``platform_properties``: extra OpenMM platform
    properties (a Dask worker's ``DeviceIndex``). With ``loop.share_bias`` and several walkers it exchanges its
    accumulators through ``iter_NNN/shared_bias/`` (:mod:`aesample.sharedbias`) every ``loop.share_interval``
    steps (:func:`share_segment_steps`).
    """
    cfg = run.config
    steps = _steps(cfg.loop.eabf_per_iteration, cfg.md)
    cv, meta = load_cv(run.iteration_dir(k - 1) / "cv.pt")
    prev = _md_dirs(run, k - 1)
    start = md.final_positions(prev[j % len(prev)])
    settings = _md_settings(run, 1000 * k + j)
    if threads is not None:
        settings.cpu_threads = threads
    if platform_properties:
        settings.platform_properties = dict(settings.platform_properties or {}, **platform_properties)
    walkers = cfg.loop.walkers
    shared = SharedBias(run.iteration_dir(k) / "shared_bias", j, walkers) if cfg.loop.share_bias and walkers > 1 \
        else None
    if shared is not None:  # a walker exchanges when it checkpoints
        settings.segment_steps = share_segment_steps(cfg)
    md.run_eabf(
        run.system, cv, _eabf_settings(run, int(meta.get("cv_dim", cfg.cv.dimension)), kappa), settings,
        _md_dirs(run, k)[j], steps, positions=start, progress=progress,
        description=f"iter {k} eABF" + (f" walker {j + 1}/{walkers}" if walkers > 1 else ""),
        resume=True, log=log.info, shared_bias=shared,
    )


def share_segment_steps(config) -> int:
    """Segment length of a shared-bias walker, steps: ``min(md.segment_steps, loop.share_interval)`` (the
    exchange happens at each checkpoint; ``loop.share_interval`` null: ``md.segment_steps``)."""
    interval = config.loop.share_interval
    return config.md.segment_steps if interval is None else min(config.md.segment_steps, int(interval))


def _walker_task(run_dir: str, k: int, j: int, kappa: float, threads: Optional[int], progress: bool) -> int:
    """Walker ``j`` of iteration ``k`` as a Dask task, in a worker process: idempotent (it resumes from the walker's
    last checkpoint, so a rerun after a lost worker continues where the checkpoint is). Returns the steps done."""
    apply_torch_threads()
    run = RunLayout.open(Path(run_dir))
    s = run.config.system
    props = execution.worker_platform_properties(s.platform, run.system.system.getNumParticles(), s.precision)
    run_eabf_walker(run, k, j, kappa, progress=progress, threads=threads, platform_properties=props)
    return md.steps_done(_md_dirs(run, k)[j])


def _run_walkers_on_cluster(run: RunLayout, k: int, kappa: float, processes: int, progress: bool) -> None:
    """Walkers of iteration ``k`` as Dask tasks (:mod:`aesample.execution`), ``processes`` at once.

    On the local cluster the cores are divided among the walkers; on a scheduler given by address each walker's
    OpenMM CPU threads are ``execution.threads`` (null: the worker's cores), on jobqueue workers the job's cores
    divided among its workers. Every walker is waited for (each keeps its checkpoints) before the first failure
    is raised, naming the walker.
    """
    ex = run.config.execution
    n = run.config.loop.walkers
    if ex.scheduler is not None:
        threads = None
    elif ex.jobqueue is not None:
        threads = plan_threads(ex.jobqueue.cores, ex.jobqueue.workers_per_job).openmm
    else:
        threads = plan_threads(ex.threads, processes).openmm
    where = ex.scheduler or (f"{ex.jobqueue.kind} jobs" if ex.jobqueue else "a local Dask cluster")
    log.info("iteration %d: %d eABF walkers on %s, %d at once, %s OpenMM thread(s) and 1 torch thread each",
             k, n, where, processes, threads if threads is not None else "the worker's")
    if run.config.loop.share_bias and processes < n:
        log.warning("iteration %d: loop.share_bias with %d of %d walkers at once: a walker shares only with those "
                    "running beside it and the finished ones", k, processes, n)
    dirs = _md_dirs(run, k)
    calls = [(str(run.run_dir), k, j, kappa, threads, progress and j == 0) for j in range(n)]
    labels = [f"iteration {k}: eABF walker {j} ({dirs[j]})" for j in range(n)]
    with execution.walker_client(ex, processes) as client:
        execution.run_tasks(client, _walker_task, calls, labels, retries=ex.retries)


def md_progress(run: RunLayout, k: int) -> tuple[int, int]:
    """(steps done, steps planned) of iteration ``k``'s MD, from its checkpoints, in ps."""
    cfg = run.config
    ns = cfg.loop.initial_md if k == 0 else cfg.loop.eabf_per_iteration
    dirs = _md_dirs(run, k)
    total = _steps(ns, cfg.md) * len(dirs)
    done = sum(md.steps_done(d) for d in dirs)
    ps = cfg.md.timestep_ps
    return int(done * ps), int(total * ps)


# ---------------------------------------------------------------------------------- data
def _frames(run: RunLayout, k: int) -> tuple[mdtraj.Trajectory, np.ndarray, Optional[np.ndarray]]:
    """Trajectory frames of iteration ``k`` (molecule only), their weights and lambdas.

    Weights: uniform at iteration 0; for eABF iterations from ``eabf.estimator`` (CZAR: exp(-beta A(xi)) / n(xi);
    naive: exp(-beta F_kappa(lambda))).
    """
    trajs, lambdas, xis = [], [], []
    for out in _md_dirs(run, k):
        result = md.load_result(out)
        trajs.append(result.load_trajectory(run.system.mdtraj_topology))
        if k > 0:
            lambdas.append(result.colvar_lambda())
            xis.append(result.colvar_xi())
    traj = mdtraj.join(trajs) if len(trajs) > 1 else trajs[0]
    if k == 0:
        return traj, np.full(traj.n_frames, 1.0 / traj.n_frames), None
    lam = np.concatenate(lambdas)
    if len(lam) != traj.n_frames:
        raise RuntimeError(f"iteration {k}: {traj.n_frames} frames but {len(lam)} COLVAR rows")
    weights = _estimates(run, k).reweighting_weights(run.config.eabf.estimator, lambdas=lam,
                                                          xis=np.concatenate(xis))
    return traj, weights, lam


def _estimates(run: RunLayout, k: int):
    """Iteration ``k``'s eABF walkers pooled (:class:`aesample.md.PooledRuns`), frames in walker order."""
    return md.PooledRuns([md.load_result(d) for d in _md_dirs(run, k)])


def _training_set(run: RunLayout, k: int) -> tuple[mdtraj.Trajectory, np.ndarray]:
    traj, weights, _ = _frames(run, k)
    if not run.config.loop.pool_iterations or k == 0:
        return traj, weights
    trajs, ws = [traj], [weights]
    for j in range(k):
        t, w, _ = _frames(run, j)
        trajs.append(t)
        ws.append(w)
    # Each iteration's weights are normalised on its own; pooling gives iterations equal mass.
    return mdtraj.join(trajs), np.concatenate(ws) / len(ws)


def _box(traj: mdtraj.Trajectory) -> Optional[np.ndarray]:
    return None if traj.unitcell_vectors is None else np.asarray(traj.unitcell_vectors, dtype=np.float64)


# ---------------------------------------------------------------------------------- training
def _featurizer(run: RunLayout):
    ms = run.system
    indices = select_atoms(ms.mdtraj_topology, run.config.cv.selection, what="cv.selection")
    parents = spanning_tree_parents(ms.mdtraj_topology, indices) if ms.periodic else None
    # Reference: the built structure's selected atoms (the same for every iteration). Fixing
    # `periodic` spares the exported CV a per-step box check (a host sync on GPUs).
    featurizer = AlignedPositions(indices, ms.positions[indices], parents=parents, periodic=ms.periodic)
    return featurizer, indices


def training_weights(weights: np.ndarray, sampling_weight: float) -> np.ndarray:
    """Training weights: the normalised reweighting ``weights`` with a share ``sampling_weight`` spread evenly
    over the frames (``training.sampling_weight``); they sum to 1 (``weights`` as they are at 0)."""
    w = np.asarray(weights, dtype=np.float64)
    if sampling_weight == 0:
        return w
    total = w.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("training weights: the reweighting weights must have a positive, finite sum")
    return (1.0 - sampling_weight) * (w / total) + sampling_weight / w.size


def run_train_stage(run: RunLayout, k: int) -> None:
    """Train the autoencoder on iteration ``k``'s reweighted frames and export xi_k."""
    cfg = run.config
    out = run.iteration_dir(k)
    traj, weights = _training_set(run, k)
    fit_weights = training_weights(weights, cfg.training.sampling_weight)
    featurizer, indices = _featurizer(run)
    xyz = torch.as_tensor(traj.xyz, dtype=torch.float64)
    box = _box(traj)
    with torch.no_grad():
        boxes = torch.zeros(xyz.shape[0], 3, 3, dtype=torch.float64) if box is None else torch.as_tensor(box)
        features = featurizer(xyz, boxes)
    if cfg.cv.standardize:
        featurizer.fit_standardization(features, torch.as_tensor(fit_weights))
        with torch.no_grad():
            features = featurizer(xyz, boxes)
    spec = ModelSpec(
        n_features=int(features.shape[1]), hidden=tuple(cfg.cv.hidden_layers), n_cv=cfg.cv.dimension,
        activation=cfg.cv.activation, variational=cfg.cv.model == "vae", beta=cfg.cv.vae_beta,
        noise_std=cfg.cv.denoising_sigma, l1_code=cfg.cv.sparse_l1,
    )
    device = cfg.training.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    options = TrainingOptions(
        learning_rate=cfg.training.learning_rate, batch_size=cfg.training.batch_size,
        max_epochs=cfg.training.max_epochs, patience=cfg.training.patience,
        val_fraction=cfg.training.validation_fraction, weight_decay=cfg.training.weight_decay,
        seed=cfg.training.seed + k, device=device,
    )
    warm = None
    if cfg.training.warm_start and k > 0:
        warm = torch.load(run.iteration_dir(k - 1) / "model.pt", weights_only=True)["state_dict"]
    result = fit_autoencoder(features, fit_weights, spec, options, warm_start=warm)
    model = result.model.cpu().double().eval()
    with torch.no_grad():
        code = model.encode(features)
    scaling = fit_cv_scaling(code, fit_weights, target_range=cfg.cv.scale_range)
    meta = {
        "selection": cfg.cv.selection,
        "system": cfg.system.name,
        "iteration": k,
        "training": result.summary(),
        "sampling_weight": cfg.training.sampling_weight,
        # Kish effective sample size of the training weights: how many frames the autoencoder learned from
        "training_ess": float(1.0 / np.sum(fit_weights ** 2)),
    }
    export_cv(featurizer, model, scaling, out / "cv.pt", metadata=meta)
    with atomic_path(out / "model.pt") as tmp:
        torch.save({"spec": spec.to_dict(), "state_dict": model.state_dict()}, tmp)
    with atomic_path(out / "weights.npy") as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, weights)
    save_history(result.history, out / "loss", plot=cfg.output.plots)
    # Sanity: the exported CV reproduces the scaled code on the training frames.

    cv, _ = load_cv(out / "cv.pt")
    xi = compute_cv(cv, traj.xyz.astype(np.float64), box=box)
    expected = scaling.apply(code.numpy())
    if not np.allclose(xi, expected, atol=1e-6):
        raise RuntimeError(f"iteration {k}: exported CV disagrees with the trained model (max diff "
                           f"{np.abs(xi - expected).max():.2e})")


# ---------------------------------------------------------------------------------- analysis
def run_analyse_stage(run: RunLayout, k: int) -> dict[str, Any]:
    """Scores, diagnostics and plots of iteration ``k``; writes ``metrics.json``."""
    from . import plots

    cfg = run.config
    out = run.iteration_dir(k)
    traj, weights, lambdas = _frames(run, k)
    box = _box(traj)
    cv_k, _ = load_cv(out / "cv.pt")
    xi_k = compute_cv(cv_k, traj.xyz.astype(np.float64), box=box)
    train_meta = json.loads((out / "cv.json").read_text()).get("training", {})
    metrics: dict[str, Any] = {
        "iteration": k,
        "frames": int(traj.n_frames),
        "training_seconds": train_meta.get("seconds"),
        "training_epochs": train_meta.get("epochs"),
        "best_val_loss": train_meta.get("best_val_loss"),
        "regression_score": None,
        # Kish effective sample size of the reweighted frames: how many frames the weights really use.
        "effective_sample_size": float(1.0 / np.sum((weights / weights.sum()) ** 2)),
        # frames the estimator cannot weight (CZAR: xi in an isolated sampled bin, without a free-energy
        # estimate), weight 0: more than a few percent means the run is too short for its grid
        "unweighted_fraction": float(np.mean(weights == 0)),
    }
    results = [md.load_result(d) for d in _md_dirs(run, k)]
    timing = json.loads((out / "md_timing.json").read_text())
    metrics["ns"] = timing["ns"]
    metrics["ns_per_day"] = timing["ns_per_day"]
    if k > 0:
        prev, _ = load_cv(run.iteration_dir(k - 1) / "cv.pt")
        xi_prev = compute_cv(prev, traj.xyz.astype(np.float64), box=box)
        metrics["regression_score"] = analysis.regression_score(xi_k, xi_prev)
    kT = _kT(run)
    metrics["kappa"] = float(np.ravel(results[0].state.kappa)[0]) if k > 0 else None  # after any cap
    estimator = cfg.eabf.estimator
    metrics["estimator"] = estimator if k > 0 else None
    pooled = md.PooledRuns(results) if k > 0 else None
    # Free-energy convergence of this iteration's eABF run (the R^2 above only says the CV stopped changing).
    drift = pooled.free_energy_drift(estimator, lambdas=lambdas) if k > 0 else None
    metrics["free_energy_drift"] = None if drift is None else drift["rms"]
    metrics["free_energy_drift_frames"] = None if drift is None else drift["frames"]
    # ... and across walkers: what one run's halves cannot see (None with one walker)
    spread = pooled.free_energy_sem(estimator, lambdas=lambdas) if k > 0 else None
    metrics["free_energy_sem"] = None if spread is None else spread["sem"]
    metrics["free_energy_sem_frames"] = None if spread is None else spread["frames"]
    # ... and within the run: block bootstrap of its accumulators (one walker can be judged on its own)
    # structural observables of the system (its recipe's hook): phi/psi of a dipeptide, RMSD of a mini-protein, ...
    observables = run.system.observables(traj) if run.system.observables is not None else {}
    dipeptide = "phi" in observables and "psi" in observables
    angles = np.column_stack([observables["phi"], observables["psi"]]) if dipeptide else None
    labels = analysis.c7ax_labels(angles[:, 0]) if dipeptide else None
    error = pooled.free_energy_error(estimator, n_boot=40, seed=k, lambdas=lambdas,
                                     delta_f_labels=labels) if k > 0 else None
    metrics["free_energy_error"] = None if error is None else _finite_or_none(error["rms"])
    metrics["hidden_barrier_fraction"] = None
    metrics["hidden_barrier_sample_fraction"] = None
    metrics["support_growth"] = None
    cells = None  # each frame's xi_{k-1} bin on the ABF grid, one label per occupied bin
    if k > 0:  # frames of different metastable sets at the same xi_{k-1}: a barrier the bias cannot see
        walker = pooled.run_index()
        metrics.update(_hidden_barrier_metrics(run, traj, pooled, weights, walker))
        st = pooled.state
        grid_bins = np.floor((pooled.colvar_xi() - st.grid_min) / st.bin_width).astype(int)
        cells = np.unique(grid_bins, axis=0, return_inverse=True)[1].ravel()
        # weight in xi_{k-1} bins that the walkers only reached in the second half of their runs
        metrics["support_growth"] = _finite_or_none(analysis.support_growth(cells, walker, weights))
    plotting = cfg.output.plots
    if dipeptide:
        metrics["dihedral_score"] = analysis.dihedral_score(xi_k, angles, weights)
        # C7eq <-> C7ax transitions behind delta_f_phi: with a handful, it is off by several kJ/mol
        metrics["phi_transitions"] = analysis.basin_transitions(angles[:, 0], n_runs=len(results))
        try:
            metrics["delta_f_phi"] = analysis.basin_free_energy_difference(angles[:, 0], weights, kT)
        except ValueError:
            metrics["delta_f_phi"] = None
        metrics["delta_f_phi_half"] = None
        if drift is not None:  # the same frames weighted with the free energy at half time
            half_w = pooled.reweighting_weights(estimator, pooled.half_state, lambdas=lambdas)
            try:
                metrics["delta_f_phi_half"] = analysis.basin_free_energy_difference(angles[:, 0], half_w, kT)
            except ValueError:
                pass
        if k > 0 and len(results) > 1:
            metrics.update(_walker_spread(results, angles[:, 0], estimator, kT))
        basin = analysis.basin_report(angles[:, 0], weights, kT, n_runs=len(results),
                                      min_transitions=cfg.loop.basin_min_transitions, min_ess=cfg.loop.basin_min_ess)
        metrics["basin_delta_f_walkers_gap"] = _walkers_gap(basin["value"], metrics.get("basin_delta_f_walkers"))
        # the same Delta F from each half of the samples: a trend all walkers share shows only there
        halves = pooled.delta_f_halves(labels, estimator, lambdas=lambdas) if k > 0 else None
        for h in ("first", "second"):
            metrics[f"basin_delta_f_{h}_half"] = None if halves is None else _finite_or_none(halves[h])
        # _basin_error gives a finite error bar with its source, or (None, None), as basin_report would store them
        df_error, df_error_from = _basin_error(error, metrics.get("basin_delta_f_sem"),
                                               metrics["basin_delta_f_walkers_gap"], halves)
        metrics["basin_delta_f"] = dict(basin, error=df_error, error_from=df_error_from)
        if k > 0:  # how much of C7ax shares xi_{k-1} bins with C7eq/C5: there the bias cannot help
            overlap = analysis.basin_overlap(angles[:, 0], cells, weights)
            metrics["c7ax_in_shared_bins"] = overlap if np.isfinite(overlap) else None  # None: C7ax never visited
        if plotting:

            plots.plot_dihedral_scatter(angles, xi_k, out / "phi_psi_cv.png", f"iteration {k}: (phi, psi) by CV")
            fes, edges = reweighted_free_energy(angles, weights, 36, cfg.system.temperature,
                                                range_=[(-np.pi, np.pi), (-np.pi, np.pi)])
            plots.plot_dihedral_free_energy(fes, edges, out / "phi_psi_fes.png", f"iteration {k}: reweighted F(phi, psi)")
    if "rmsd_ca" in observables:  # folding of a mini-protein (chignolin)
        obs = observables
        metrics["rmsd_ca_mean"] = float(np.average(obs["rmsd_ca"], weights=weights))
        metrics["folded_fraction"] = float(weights[obs["rmsd_ca"] < 0.2].sum() / weights.sum())
        metrics["rg_mean"] = float(np.average(obs["rg"], weights=weights))
        metrics["hbond_d3o_t6n_mean"] = float(np.average(obs["hbond_d3o_t6n"], weights=weights))
        metrics["hbond_d3n_t8o_mean"] = float(np.average(obs["hbond_d3n_t8o"], weights=weights))
        metrics["cv_rmsd_score"] = analysis.regression_score(obs["rmsd_ca"], xi_k, weights)
    if plotting:
        lo, hi = cfg.eabf.grid_min, cfg.eabf.grid_max
        plots.plot_cv_histogram(xi_k, out / "cv_histogram.png", f"iteration {k}: sampled CV",
                                ranges=[(lo, hi)] * xi_k.shape[1])
        if k > 0:
            centers, pmf = pooled.czar_pmf()
            plots.plot_free_energy(centers, pmf, out / "free_energy.png",
                                   f"iteration {k}: CZAR free energy along xi_{k - 1}", cv_label=f"xi_{k - 1}")
        else:

            fes, edges = reweighted_free_energy(xi_k, weights, 40, cfg.system.temperature)
            centers = [0.5 * (e[1:] + e[:-1]) for e in edges]
            plots.plot_free_energy(centers, fes, out / "free_energy.png",
                                   "iteration 0: free energy along xi_0 (unbiased MD)", cv_label="xi_0")
        history = [m for m in (run.metrics(j) for j in range(k)) if m is not None] + [metrics]
        its = [h["iteration"] for h in history if h.get("regression_score") is not None]
        if its:
            scores = [h["regression_score"] for h in history if h.get("regression_score") is not None]
            extra = None
            if "dihedral_score" in metrics:
                extra = {"score vs (phi, psi)": [h.get("dihedral_score") for h in history
                                                  if h.get("regression_score") is not None]}
            plots.plot_scores(its, scores, cfg.loop.convergence_threshold, out / "scores.png", extra)
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def _finite_or_none(value) -> Optional[float]:
    return float(value) if value is not None and np.isfinite(value) else None


def _hidden_barrier_metrics(run: RunLayout, traj, pooled, weights: np.ndarray,
                            walker: np.ndarray) -> dict[str, Any]:
    """The hidden-barrier diagnostic (:func:`aesample.hiddenbarrier.hidden_barrier`) on the model's input
    features of the iteration's frames, binned on the ABF grid of the CV the walkers ran along.

    Run twice: with the reweighting weights (how much of the Boltzmann weight sits where the CV mixes sets) and
    with every frame weighted alike (how much of the biased run does). Why both: where a learned CV squeezes a
    barrier, the mixed bins are the junction between the sets, at high free energy. They carry almost no
    Boltzmann weight, yet the free-energy difference between the sets is taken across them, and the biased runs
    spend a fair share of their time there."""
    featurizer, _ = _featurizer(run)
    xyz = torch.as_tensor(traj.xyz, dtype=torch.float64)
    box = _box(traj)
    with torch.no_grad():
        boxes = torch.zeros(xyz.shape[0], 3, 3, dtype=torch.float64) if box is None else torch.as_tensor(box)
        features = featurizer(xyz, boxes).numpy()
    st = pooled.state
    xi = pooled.colvar_xi()
    runs = walker if len(walker) == traj.n_frames else None  # ``walker``: the run id of each COLVAR row
    grid = (st.grid_min, st.bin_width, st.bins, st.periodic)
    weighted = hidden_barrier(features, xi, weights, runs, *grid)
    sampled = hidden_barrier(features, xi, np.ones(traj.n_frames), runs, *grid)
    # a barrier between neighbouring bins (each holding one set) is not in any bin: the walkers' crossings show it
    split = slow_split(xi, runs, *grid)
    return {"hidden_barrier_fraction": float(weighted.weight_fraction), "hidden_barrier": weighted.as_dict(5),
            "hidden_barrier_sample_fraction": float(sampled.weight_fraction),
            "hidden_barrier_samples": sampled.as_dict(5), "slow_split": split.as_dict()}


def _walker_spread(results, phi: np.ndarray, estimator: str, kT: float) -> dict[str, Any]:
    """Each walker's own Delta F (its frames, its accumulators) and the standard error of their mean.

    ``phi``: the pooled frames' phi in walker order. Two definitions: the phi > 0 split (``delta_f_phi_*``) and
    the named basins of :func:`aesample.analysis.basin_report` (``basin_delta_f_*``, C7ax against the rest). The
    pooled Delta F is not the walkers' mean, but its statistical error is about that of the mean when the walkers
    are independent: SD / sqrt(n).
    """
    split, basins, offset = [], [], 0
    for result in results:
        n = len(result.colvar_xi())
        part = phi[offset:offset + n]
        offset += n
        try:
            w = result.reweighting_weights(estimator)
        except ValueError:  # no estimate where the walker went
            split.append(None)
            basins.append(None)
            continue
        try:
            split.append(analysis.basin_free_energy_difference(part, w, kT))
        except ValueError:  # a walker that never left its basin
            split.append(None)
        basins.append(analysis.basin_report(part, w, kT)["value"])  # None: one side without weight
    return {"delta_f_phi_walkers": split, "delta_f_phi_sem": _sem(split),
            "basin_delta_f_walkers": basins, "basin_delta_f_sem": _sem(basins)}


def _sem(values: list) -> Optional[float]:
    """Standard error of the mean of the values that exist (None with fewer than two)."""
    ok = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.std(ok, ddof=1) / np.sqrt(len(ok))) if len(ok) >= 2 else None


def _basin_error(error: Optional[dict], walkers_sem: Optional[float], walkers_gap: Optional[float] = None,
                 halves: Optional[dict] = None) -> tuple[Optional[float], Optional[str]]:
    """The error bar of the named basins' Delta F and where it comes from.

    The pooled run's own error (block bootstrap or basin visits, ``error["delta_f_error_from"]``) sees only the
    statistics of the pooled samples. Walkers that each build their own bias also differ by that bias's history,
    which no within-run resampling sees (benchmarks/LOOP_RESULTS.md): with walkers, the larger of the two is the
    error bar. ``walkers_gap``, |pooled Delta F - the walkers' mean|, joins them: both estimate the same Delta F,
    so where they differ by more than the walkers' spread explains, at least one of them is off by that much.
    ``halves`` (:meth:`aesample.md.FreeEnergyEstimates.delta_f_halves`) joins them as half the difference between
    the first and the second half of the samples: for stationary sampling a one-draw estimate of the whole run's
    error (each half's error is about sqrt(2) times it), and where every walker drifts the same way over its run
    the one measure that sees it.
    """
    own = None if error is None else _finite_or_none(error.get("delta_f_error"))
    out = (own, None if own is None else error.get("delta_f_error_from"))
    split = None if halves is None else 0.5 * abs(halves["second"] - halves["first"])
    for value, source in ((walkers_sem, "walkers' SEM"), (walkers_gap, "pooled vs walkers' mean"),
                          (split, "first vs second half of the samples")):
        if value is not None and np.isfinite(value) and (out[0] is None or value > out[0]):
            out = (float(value), source)
    return out


def _walkers_gap(pooled: Optional[float], walkers: Optional[list]) -> Optional[float]:
    """|pooled - mean of the walkers' own values| (None without a pooled value or two walkers' values)."""
    ok = [v for v in (walkers or []) if v is not None and np.isfinite(v)]
    if pooled is None or not np.isfinite(pooled) or len(ok) < 2:
        return None
    return float(abs(pooled - np.mean(ok)))


def is_converged(metrics: dict[str, Any], loop) -> bool:
    """The driver's criterion: no blocker in :func:`aesample.verdict.convergence_blockers` (one statement of it,
    which the report and ``aesample status`` print): iteration >= ``loop.min_iterations``, R^2(xi_k ~ xi_k-1) >=
    ``loop.convergence_threshold``, the free energy's drift, walkers' standard error and own error (block
    bootstrap and basin visits) and the named basins' Delta F error bar (with walkers, at least their standard
    error) within ``loop.free_energy_tolerance``, that Delta F sampled, no hidden barrier above
    ``loop.hidden_barrier_tolerance``, walkers that crossed the slowest split of the CV bins at least
    ``loop.min_split_crossings`` times each, an effective sample size of at least ``loop.min_ess`` and sampling
    that stopped growing (``loop.max_support_growth``)."""
    return not convergence_blockers({k: v for k, v in metrics.items() if k != "convergence_blockers"}, loop)


def format_metrics(m: dict[str, Any]) -> str:
    """One line per iteration for the terminal and `aesample status`."""
    parts = [f"iteration {m['iteration']}:"]
    if m.get("regression_score") is not None:
        parts.append(f"R2(xi_k~xi_k-1)={m['regression_score']:.4f}")
    if m.get("dihedral_score") is not None:
        parts.append(f"R2(xi~phi,psi)={m['dihedral_score']:.3f}")
    # the phi > 0 split only where no named-basin report exists (older metrics): that one says when it is sampled
    if m.get("delta_f_phi") is not None and not m.get("basin_delta_f"):
        sem = f" +- {m['delta_f_phi_sem']:.2f} (walkers' SEM)" if m.get("delta_f_phi_sem") is not None else ""
        parts.append(f"dF(phi>0 - phi<0)={m['delta_f_phi']:.2f}{sem} kJ/mol ({m.get('phi_transitions')} transitions)")
    if m.get("free_energy_drift") is not None:
        parts.append(f"F drift={m['free_energy_drift']:.2f} kJ/mol")
    if m.get("free_energy_sem") is not None:
        parts.append(f"F walkers' SEM={m['free_energy_sem']:.2f} kJ/mol")
    if m.get("free_energy_error") is not None:
        parts.append(f"F error (bootstrap, basin visits)={m['free_energy_error']:.2f} kJ/mol")
    basin = m.get("basin_delta_f")
    if basin and basin.get("value") is None:
        parts.append(f"dF({basin['definition']}) not sampled ({basin['reason']})")
    elif basin:
        err = f" +- {basin['error']:.2f}" if basin.get("error") is not None else ""
        err += f" ({basin['error_from']})" if basin.get("error") is not None and basin.get("error_from") else ""
        note = "" if basin["status"] == "ok" else f" [not sampled: {basin['reason']}]"
        parts.append(f"dF({basin['definition']})={basin['value']:.2f}{err} kJ/mol{note}")
    if m.get("hidden_barrier_fraction") is not None:
        sampled = m.get("hidden_barrier_sample_fraction")
        parts.append(f"hidden barrier={100 * m['hidden_barrier_fraction']:.1f} % of the weight"
                     + (f", {100 * sampled:.1f} % of the frames" if sampled is not None else ""))
    split = m.get("slow_split") or {}
    if split.get("shares"):
        parts.append(f"slowest split {100 * min(split['shares']):.0f}/{100 * max(split['shares']):.0f} % crossed "
                     f"{split['crossings_per_run']:.1f} times per walker")
    if m.get("rmsd_ca_mean") is not None:
        parts.append(f"<RMSD_CA>={m['rmsd_ca_mean']:.3f} nm folded={m['folded_fraction']:.2f}")
    if m.get("effective_sample_size") is not None:
        parts.append(f"ESS={m['effective_sample_size']:.0f}/{m['frames']}")
    if m.get("support_growth") is not None:  # weight in CV bins first reached in the runs' second halves
        parts.append(f"late support={100 * m['support_growth']:.0f}%")
    parts.append(f"{m.get('ns', 0):.3f} ns")
    if m.get("ns_per_day"):
        parts.append(f"{m['ns_per_day']:.1f} ns/day")
    if m.get("training_seconds") is not None:
        parts.append(f"train {m['training_seconds']:.1f} s")
    return " ".join(parts)
