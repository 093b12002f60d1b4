"""Biased eABF molecular dynamics in restartable segments.

:func:`run_eabf` is the entry point the driver calls once per iteration::

    result = run_eabf(molecular_system, cv_module, EABFSettings(...), MDSettings(...), out_dir, n_steps)

What it does: copy the System, add :class:`~aesample.eabf.ExtendedABF`, build a Context
(LangevinMiddleIntegrator; BAOAB-RESPA multiple time stepping with the eABF force on the slow group when
``MDSettings.cv_interval`` > 1), minimise and optionally equilibrate with sampling OFF, then run production in
segments of ``MDSettings.segment_steps``. After every segment it writes, each file atomically:

* ``traj/seg_00000.dcd`` ...: frames of the molecule (solute) atoms every ``report_interval`` steps, one file
  per segment (resume never truncates a trajectory);
* ``COLVAR``: rows ``time xi lambda fbias`` at the same steps as the frames (PLUMED ``#! FIELDS`` header);
* ``eabf.grad .count .pmf .czar.grad .czar.pmf .zcount``: Colvars-style grids;
* a consistent checkpoint: ``checkpoint/seg_N.chk`` (OpenMM binary checkpoint, carries the RNG state, so a
  resume on the same platform is bit-reproducible on Reference), ``checkpoint/seg_N.xml`` (portable XML State),
  ``checkpoint/seg_N.eabf.npz`` (:class:`~aesample.eabf.EABFState`), and last ``checkpoint.json`` (segment index,
  step, time, file names). ``checkpoint.json`` is the commit point; files of older segments are removed after it.
  Shared-bias walkers (``run_eabf(..., shared_bias=)``) also keep ``checkpoint/seg_N.shared.npz``, the other
  walkers' sums applied in the next segment.
* ``eabf_half.npz``: the eABF state at the first checkpoint at or past half of ``n_steps`` (and before the end),
  written once, with its production step in ``meta["production_step"]``; comparing the free energy from it with
  the final one shows how much it still moves (:meth:`RunOutputs.free_energy_drift`), and it splits the samples
  and frames into two halves (:meth:`RunOutputs.delta_f_halves`).
* ``blocks/step_NNNNNNNNNN.npz``: the cumulative eABF state at the end of each of ``MDSettings.error_blocks``
  time blocks (compressed); differences of consecutive ones are the blocks' own accumulators, which
  :meth:`FreeEnergyEstimates.bootstrap` resamples for error bars. Files past the checkpoint are dropped on resume.

``run_eabf(..., resume=True)`` rebuilds the System with the saved accumulators baked in, loads the checkpoint
(falls back to the XML State on a different platform), drops COLVAR rows past the checkpoint and continues until
``n_steps`` production steps are done.

:func:`run_md` is the same machinery without bias (iteration 0 of the loop). Reading back:
:func:`load_result` -> :class:`RunOutputs` (``load_trajectory``, ``colvar_lambda``, ``colvar_xi``, ``f_kappa``,
``free_energy``, ``reweighting_weights``, ``czar_pmf``, ``state``, ``half_state``, ``free_energy_drift``),
:func:`steps_done`, :func:`final_positions`. Also written: ``run.json`` (settings, solute indices) and
``final_positions.npy`` (molecule positions at the end).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .config import Config, EABFConfig, MDConfig, OutputConfig, SystemConfig
from .eabf import EABFState, ExtendedABF
from .io import atomic_path, atomic_write_json, atomic_write_text
from .threads import plan_threads, threads_in_effect
from .torchbinding import resolve_cuda_graphs
from .outputs import ColvarWriter, read_colvar, write_eabf_grids

HALF_STATE = "eabf_half.npz"  # eABF state at half of the run, for the free-energy drift
HALF_STEP_KEY = "production_step"  # meta of the half-time state: the step it was saved at
BLOCKS_DIR = "blocks"  # cumulative eABF states at time-block ends, for block-bootstrap error bars

__all__ = ["EABFSettings", "MDSettings", "EABFRunResult", "FreeEnergyEstimates", "RunOutputs", "PooledRuns",
           "SimulationBlowUp", "run_eabf", "run_md", "load_result", "steps_done", "final_positions", "copy_system",
           "make_integrator", "mts_langevin_integrator"]


# Defaults and units are owned by aesample.config (the fields' descriptions); the settings below are the same
# parameters in the engine's units (ps, steps), converted once by from_config.
_MD = MDConfig()
_EABF = EABFConfig()
_SYSTEM = SystemConfig()
_OUTPUT = OutputConfig()


@dataclass
class EABFSettings:
    """eABF parameters (plain floats in CV units / kJ/mol / ps; see :class:`~aesample.eabf.ExtendedABF`).

    grid_min, grid_max : per-component grid bounds (CV units); bins : bins per component; kappa : kJ/mol/CVunit^2;
    periodic : per component or None (from the CV); extended_period : ps; extended_mass : amu nm^2/CVunit^2 or None;
    full_samples, min_samples : linear ramp (None: ``full_samples // 2``); wall_kappa : walls (default 10 kappa);
    force_group : 0..31 (None: a free one); cuda_graphs : "auto" | "on" | "off"
    (:func:`aesample.torchbinding.resolve_cuda_graphs`); czar_bins : bins per component of the
    CZAR xi grid (None: ``bins``); czar_min_count : samples a xi bin needs for a CZAR gradient estimate (recorded
    in the state's meta); close_periodic_bias : circulation-free bias around periodic components;
    bias_only_where_reached : no ABF bias in lambda bins the CV has not reached (kept on resume as the run was
    started: ``run.json``); smooth_bias, smooth_bias_interval : the bias as the gradient of the interpolated
    integral of the per-bin means, refreshed every that many samples (kept on resume as started); cpu_kernel :
    "auto" | "on" | "off", the compiled CPU step (:mod:`aesample.cpukernel`). Defaults: the
    ``eabf`` section of :class:`aesample.config.Config`.
    """

    grid_min: Union[float, Sequence[float]]
    grid_max: Union[float, Sequence[float]]
    bins: Union[int, Sequence[int]] = _EABF.bins
    kappa: Union[float, Sequence[float]] = _EABF.kappa
    periodic: Optional[Sequence[bool]] = None
    extended_period: float = _EABF.extended_period
    extended_mass: Optional[Union[float, Sequence[float]]] = None
    full_samples: int = _EABF.full_samples
    min_samples: Optional[int] = None
    wall_kappa: Optional[Union[float, Sequence[float]]] = None
    force_group: Optional[int] = None
    cuda_graphs: str = _EABF.cuda_graphs
    czar_bins: Optional[Union[int, Sequence[int]]] = None
    czar_min_count: int = _EABF.czar_min_count
    close_periodic_bias: bool = _EABF.close_periodic_bias
    bias_only_where_reached: bool = _EABF.bias_only_where_reached
    smooth_bias: bool = _EABF.smooth_bias
    smooth_bias_interval: int = _EABF.smooth_bias_interval
    cpu_kernel: str = _EABF.cpu_kernel

    @classmethod
    def from_config(cls, config: Config, d: int, kappa: Optional[float] = None) -> "EABFSettings":
        """The ``eabf`` section of ``config`` for a ``d``-dimensional CV, with ``kappa`` in place of ``eabf.kappa``
        (a capped coupling; the walls scale with it). ``czar_bins`` null: :func:`aesample.eabf.coupled_czar_bins`
        at ``system.temperature``."""
        from .eabf import coupled_czar_bins

        e = config.eabf
        if e.czar_bins is None and config.system.temperature is None:
            raise ValueError("system.temperature: not set (the CZAR bins follow the coupling width sqrt(kT/kappa)); "
                             "pass aesample.config.effective_config(config)")
        kappa = e.kappa if kappa is None else float(kappa)
        bins, gmin, gmax = [e.bins] * d, [e.grid_min] * d, [e.grid_max] * d
        return cls(
            grid_min=gmin, grid_max=gmax, bins=bins, kappa=[kappa] * d, extended_period=e.extended_period,
            full_samples=e.full_samples, min_samples=e.min_samples,
            # walls scale with the spring: their period relative to the extended period stays the same
            wall_kappa=[e.wall_kappa * kappa / e.kappa] * d,
            czar_bins=[e.czar_bins] * d if e.czar_bins is not None else coupled_czar_bins(
                bins, gmin, gmax, [kappa] * d, config.system.temperature),
            czar_min_count=e.czar_min_count, cuda_graphs=e.cuda_graphs, close_periodic_bias=e.close_periodic_bias,
            bias_only_where_reached=e.bias_only_where_reached, smooth_bias=e.smooth_bias,
            smooth_bias_interval=e.smooth_bias_interval, cpu_kernel=e.cpu_kernel,
        )


@dataclass
class MDSettings:
    """MD parameters.

    temperature : K (None: the molecular system's); timestep : ps; friction : 1/ps;
    platform : name ("auto", "Reference", "CPU", "CUDA", "OpenCL") or an ``openmm.Platform``;
    platform_properties : dict; report_interval : steps between frames/COLVAR rows; segment_steps : steps per
    checkpointed segment; minimize : minimise first (sampling off); equilibration_steps : unbiased-sampling-off
    steps before production; seed : integrator/velocity seed (0 = random); progress : tqdm bar;
    precision : GPU precision for :func:`aesample.platforms.select_platform`; trajectory_format : "dcd" or "xtc";
    error_blocks : time blocks per biased run whose accumulators are saved for block-bootstrap error bars;
    cpu_threads : threads of the CPU platform when that is the one chosen (None: every core this process may run
    on, see :mod:`aesample.threads`; ``platform_properties`` win over it).

    cv_interval : int, >= 1 (default 1)
        Multiple time stepping for biased runs. 1: LangevinMiddleIntegrator, the eABF force (CV, coupling, ABF
        bias, sampling) is evaluated every step. K > 1: BAOAB-RESPA (:func:`mts_langevin_integrator`, the dynamics
        of :class:`openmm.MTSLangevinIntegrator`) with outer step ``K * timestep``; every other force group is
        evaluated K times per outer step (every
        ``timestep``), the eABF force group once (every ``K * timestep``), so the CV costs 1/K per inner step and
        the ABF accumulators get one sample per outer step (K times fewer samples per ns; count-based settings
        such as ``full_samples`` keep their meaning in samples). Step counts (``n_steps``, ``report_interval``,
        ``segment_steps``, ``equilibration_steps``) stay in inner steps of ``timestep``: ``report_interval`` and
        ``segment_steps`` must be multiples of K, ``n_steps`` and ``equilibration_steps`` are rounded up to one.
        Stability: ``K * timestep`` must not exceed a tenth of the shortest period of the extended system
        (:meth:`aesample.eabf.ExtendedABF.maxOuterTimestep`: 20 fs for periodic CVs with the default 0.2 ps
        period; 6 fs for non-periodic CVs because of the default walls, 10 kappa), else a ValueError. A run must
        be resumed with the cv_interval it was started with. Ignored by :func:`run_md` (no eABF force).
    """

    temperature: Optional[float] = None
    timestep: float = _MD.timestep_ps
    friction: float = _MD.friction
    platform: Any = _SYSTEM.platform
    platform_properties: Optional[Dict[str, str]] = None
    report_interval: int = _MD.report_interval
    segment_steps: int = _MD.segment_steps
    minimize: bool = _MD.minimize
    minimize_max_iterations: int = 1000
    equilibration_steps: int = _MD.steps(_MD.equilibration)
    seed: int = _MD.seed
    progress: bool = True
    precision: str = _SYSTEM.precision
    trajectory_format: str = _OUTPUT.trajectory_format
    cv_interval: int = _MD.cv_interval
    cpu_threads: Optional[int] = None
    error_blocks: int = 20

    @classmethod
    def from_config(cls, config: Config, seed_offset: int = 0) -> "MDSettings":
        """The ``md`` section (with the system's temperature, platform and precision and the trajectory format) of
        ``config`` in the engine's units: timestep fs -> ps, equilibration ps -> steps; seed ``md.seed +
        seed_offset``."""
        md = config.md
        return cls(
            timestep=md.timestep_ps, friction=md.friction, temperature=config.system.temperature,
            report_interval=md.report_interval, segment_steps=md.segment_steps, seed=md.seed + seed_offset,
            minimize=md.minimize, equilibration_steps=md.steps(md.equilibration),
            platform=config.system.platform, precision=config.system.precision,
            trajectory_format=config.output.trajectory_format, cv_interval=md.cv_interval,
            cpu_threads=None if config.execution.threads is None else plan_threads(config.execution.threads).openmm,
        )

    def check(self, biased: bool = True) -> int:
        """Validate the step counts; returns the multiple-time-stepping factor in use (1 for unbiased runs).

        Raises ValueError naming the setting: ``report_interval``/``segment_steps`` not positive, ``segment_steps``
        not a multiple of ``report_interval``, ``cv_interval`` not an integer >= 1 or not dividing both, a
        ``trajectory_format`` other than dcd/xtc.
        """
        if self.report_interval <= 0 or self.segment_steps <= 0:
            raise ValueError(f"report_interval and segment_steps must be > 0, got {self.report_interval}, "
                             f"{self.segment_steps}")
        if self.segment_steps % self.report_interval:
            raise ValueError(f"segment_steps={self.segment_steps} must be a multiple of "
                             f"report_interval={self.report_interval}")
        if self.trajectory_format not in ("dcd", "xtc"):
            raise ValueError(f"trajectory_format must be 'dcd' or 'xtc', got {self.trajectory_format!r}")
        cv_interval = int(self.cv_interval)
        if cv_interval != self.cv_interval or cv_interval < 1:
            raise ValueError(f"cv_interval must be an integer >= 1, got {self.cv_interval!r}")
        if not biased:
            return 1  # nothing to put on a slow force group
        if self.report_interval % cv_interval or self.segment_steps % cv_interval:
            raise ValueError(f"report_interval={self.report_interval} and segment_steps={self.segment_steps} must be "
                             f"multiples of cv_interval={cv_interval} (the MTS outer step)")
        return cv_interval


@dataclass
class EABFRunResult:
    """What :func:`run_eabf` produced."""

    out_dir: Path
    n_steps: int
    state: EABFState
    colvar: Path
    trajectories: List[Path]
    grids: Dict[str, np.ndarray]
    grid_prefix: Path
    temperature: float
    ns_per_day: float
    positions: np.ndarray  # final positions of the whole extended System (nm)
    platform: str = ""


class SimulationBlowUp(RuntimeError):
    """The integration left physical space: non-finite coordinates, or an extended variable far beyond its walls.

    Raised at the report where it is seen, before any further output of the segment is written (the last
    checkpoint stays the commit point, so nothing already produced is lost). Some platforms (Reference) do not
    stop on non-finite coordinates themselves and can crash the process a few steps later.
    """


def copy_system(system):
    """Deep copy of an openmm.System (XML round trip)."""
    import openmm

    return openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))


def make_integrator(system, eabf: Optional[ExtendedABF], temperature: float, friction: float, timestep: float,
                    cv_interval: int = 1):
    """The integrator of an (e)ABF run: see :attr:`MDSettings.cv_interval`.

    ``cv_interval`` 1 (or no ``eabf``): ``LangevinMiddleIntegrator(temperature, friction, timestep)``. K > 1:
    :func:`mts_langevin_integrator` ``(temperature, friction, K * timestep, K, every other force group,
    eabf.forceGroup)`` (the dynamics of ``openmm.MTSLangevinIntegrator``, one slow evaluation per step); raises
    ValueError when ``K * timestep`` breaks the stability rule of
    :meth:`~aesample.eabf.ExtendedABF.maxOuterTimestep`. Units: K, 1/ps, ps. Its ``step(n)`` advances n outer steps.
    """
    import openmm

    cv_interval = int(cv_interval)
    if eabf is None or cv_interval == 1:
        return openmm.LangevinMiddleIntegrator(temperature, friction, timestep)
    outer = cv_interval * timestep  # cv_interval checked by MDSettings.check (mts_langevin_integrator: >= 1)
    try:
        eabf.checkOuterTimestep(outer)
    except ValueError as exc:
        raise ValueError(f"cv_interval={cv_interval} with timestep={timestep} ps: {exc}") from None
    fast = sorted({system.getForce(i).getForceGroup() for i in range(system.getNumForces())} - {eabf.forceGroup})
    return mts_langevin_integrator(temperature, friction, outer, cv_interval, fast, eabf.forceGroup)


def mts_langevin_integrator(temperature: float, friction: float, outer_timestep: float, substeps: int,
                            fast_groups: Sequence[int], slow_group: int):
    """Two-level BAOAB-RESPA Langevin integrator (a CustomIntegrator), with one slow force evaluation per step.

    The dynamics of :class:`openmm.MTSLangevinIntegrator` ``(T, friction, outer_timestep, [(g, substeps) for g in
    fast_groups] + [(slow_group, 1)])``: ``substeps`` BAOAB inner steps of ``outer_timestep / substeps`` with the
    fast groups, and the slow group as an impulse once per outer step. Difference: the two slow half kicks that
    meet at a step boundary are applied together, as one full kick at the end of the step, before the last fast
    half kick at the same positions. The positions are those of MTSLangevinIntegrator (the velocities at step
    boundaries carry the full slow kick instead of half of it: a kinetic-energy reporter sees that offset), and a
    step costs exactly ``substeps`` evaluations of the fast groups and one of the slow group: OpenMM keeps only
    the last evaluated force-group set between steps, so MTSLangevinIntegrator pays one extra fast evaluation per
    step (measured on the CPU platform with a trivial slow group, K = 2: +27 % per inner step for chignolin in
    implicit solvent, +51 % for alanine dipeptide in water; this integrator +0-3 %). Keep the fast forces in ONE
    group for this to hold.
    The slow group is evaluated at the step-boundary configurations, so reporters and ``getState`` calls between
    steps see already-sampled configurations (no extra eABF samples).

    Parameters: K, 1/ps, ps (outer step), number of inner steps per outer step, force groups.
    """
    import openmm

    from .estimators import kT

    k = int(substeps)
    if k < 1:
        raise ValueError(f"substeps must be >= 1, got {substeps}")
    fast_groups = [int(g) for g in fast_groups]
    if int(slow_group) in fast_groups:
        raise ValueError(f"slow_group={slow_group} is also listed among fast_groups={fast_groups}")
    h = float(outer_timestep) / k
    integ = openmm.CustomIntegrator(float(outer_timestep))
    integ.addGlobalVariable("a", math.exp(-float(friction) * h))
    integ.addGlobalVariable("b", math.sqrt(1.0 - math.exp(-2.0 * float(friction) * h)))
    integ.addGlobalVariable("kT", kT(float(temperature)))
    integ.addPerDofVariable("x1", 0)
    integ.addUpdateContextState()
    sub = f"(dt/{k})"
    for i in range(k):
        for g in fast_groups:
            integ.addComputePerDof("v", f"v+0.5*{sub}*f{g}/m")
        integ.addComputePerDof("x", f"x+0.5*{sub}*v")
        integ.addComputePerDof("v", "a*v + b*sqrt(kT/m)*gaussian")
        integ.addComputePerDof("x", f"x+0.5*{sub}*v")
        integ.addComputePerDof("x1", "x")
        integ.addConstrainPositions()
        integ.addComputePerDof("v", f"v+(x-x1)/{sub}")
        integ.addConstrainVelocities()
        if i == k - 1:
            integ.addComputePerDof("v", f"v+dt*f{int(slow_group)}/m")
        for g in fast_groups:
            integ.addComputePerDof("v", f"v+0.5*{sub}*f{g}/m")
    integ.addConstrainVelocities()
    return integ


def _platform(md: MDSettings, n_atoms: int):
    import openmm

    if isinstance(md.platform, openmm.Platform):
        return md.platform, dict(md.platform_properties or {})
    try:
        from .platforms import select_platform
    except ImportError:  # pragma: no cover - the lead's module exists in the package
        return openmm.Platform.getPlatformByName(md.platform), dict(md.platform_properties or {})
    platform, props = select_platform(md.platform, n_atoms, md.precision)
    if platform.getName() == "CPU":  # explicit, never OpenMM's own guess (None: every core this process may use)
        props["Threads"] = str(md.cpu_threads if md.cpu_threads is not None else plan_threads().openmm)
    props.update(md.platform_properties or {})
    return platform, props


def _solute_indices(ms) -> np.ndarray:
    if hasattr(ms, "solute_indices"):
        return np.asarray(ms.solute_indices(), dtype=int)
    return np.arange(ms.system.getNumParticles())


def _mdtraj_topology(ms):
    import mdtraj

    top = getattr(ms, "mdtraj_topology", None)
    return top if top is not None else mdtraj.Topology.from_openmm(ms.topology)


def _write_traj(path: Path, xyz: np.ndarray, topology, times: np.ndarray, boxes: Optional[np.ndarray]) -> None:
    import mdtraj

    traj = mdtraj.Trajectory(xyz.astype(np.float32), topology, time=times)
    if boxes is not None:
        traj.unitcell_vectors = boxes.astype(np.float32)
    with atomic_path(path) as tmp:
        if path.suffix == ".xtc":
            traj.save_xtc(str(tmp), force_overwrite=True)
        else:
            traj.save_dcd(str(tmp), force_overwrite=True)


def _block_step(path: Path) -> int:
    """Production step of a block snapshot ``blocks/step_NNNNNNNNNN.npz``."""
    return int(path.stem.split("_")[1])


def _truncate_colvar(path: Path, n_rows: int) -> None:
    """Keep the header and the first ``n_rows`` data rows of COLVAR (those up to the checkpoint); later rows were
    written before a crash that preceded the next checkpoint.

    Counting rows, not comparing times: the checkpoint time is a sum of float steps and the COLVAR time is printed
    to 10 digits, so after ~10^6 steps a row at the checkpoint time may print a hair above it (seen: 3100 ps vs
    3099.9999... ps dropped the row and left the frames one ahead of COLVAR).
    """
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep, rows = [], 0
    for ln in lines:
        if ln.startswith("#") or not ln.strip():
            keep.append(ln)
        elif rows < n_rows:
            keep.append(ln)
            rows += 1
    if rows < n_rows:
        raise RuntimeError(f"{path}: {rows} data rows, but the checkpoint needs {n_rows}; COLVAR was truncated "
                           f"outside aesample")
    if len(keep) != len(lines):
        atomic_write_text(path, "".join(keep))


def run_eabf(
    molecular_system,
    cv_module,
    eabf_settings: EABFSettings,
    md_settings: MDSettings,
    out_dir: Union[str, Path],
    n_steps: int,
    resume: bool = False,
    initial_state: Optional[EABFState] = None,
    cv_units: str = "CV units",
    log=print,
    positions: Optional[np.ndarray] = None,
    progress: Optional[bool] = None,
    description: str = "eABF",
    shared_bias=None,
) -> EABFRunResult:
    """Run (or resume) eABF production of ``n_steps`` steps in checkpointed segments.

    Parameters
    ----------
    molecular_system
        Object with ``system`` (openmm.System, not modified: it is copied), ``topology``, ``positions`` (N, 3) nm,
        optional ``temperature`` (K), ``box`` ((3, 3) nm or None), ``mdtraj_topology``, ``solute_indices()``
        (as :class:`aesample.systems.MolecularSystem`).
    cv_module
        CV module (TorchScript contract) of dimension d.
    eabf_settings, md_settings
        :class:`EABFSettings`, :class:`MDSettings`.
    out_dir
        Output directory (created).
    n_steps
        Total production steps (a resume continues up to this number).
    resume
        Continue from ``out_dir/checkpoint.json`` when it exists (fresh start otherwise).
    initial_state
        Accumulators to start from (fresh runs only).
    positions
        Starting molecule positions (N, 3) nm instead of ``molecular_system.positions``.
    cv_units
        Text for the grid headers.
    log
        Callable for one-line messages (None to silence).
    progress, description
        Override ``md_settings.progress``; label of the progress bar.
    shared_bias
        A :class:`aesample.sharedbias.SharedBias`: at every checkpoint publish this walker's accumulators, read the
        other walkers' and apply their sums in the bias of the next segment (the force and Context are rebuilt
        from the checkpoint; the sums are saved with it, ``checkpoint/seg_N.shared.npz``, and a resume applies
        them again). None: an independent walker.

    Returns
    -------
    EABFRunResult
    """
    if not isinstance(md_settings, MDSettings):
        raise TypeError(f"run_eabf(molecular_system, cv, eabf_settings, md_settings, out_dir, n_steps): "
                        f"md_settings must be an MDSettings, got {type(md_settings).__name__}")
    return _run(_RunRequest(molecular_system, cv_module, eabf_settings, md_settings, Path(out_dir), int(n_steps),
                            resume, initial_state, positions, cv_units, log, progress, description, shared_bias))


def run_md(
    molecular_system,
    md_settings: MDSettings,
    out_dir: Union[str, Path],
    n_steps: int,
    positions: Optional[np.ndarray] = None,
    resume: bool = False,
    progress: Optional[bool] = None,
    description: str = "MD",
    log=print,
) -> EABFRunResult:
    """Unbiased MD with the same segment/checkpoint/trajectory machinery as :func:`run_eabf` (no COLVAR, no grids),
    arguments in the same order: ``run_md(molecular_system, md_settings, out_dir, n_steps)``.

    Returns an :class:`EABFRunResult` whose ``state`` is None.
    """
    if not isinstance(md_settings, MDSettings):
        raise TypeError(f"run_md(molecular_system, md_settings, out_dir, n_steps): md_settings must be an "
                        f"MDSettings, got {type(md_settings).__name__}")
    return _run(_RunRequest(molecular_system, None, None, md_settings, Path(out_dir), int(n_steps), resume, None,
                            positions, "", log, progress, description))


@dataclass
class _RunRequest:
    """One call of :func:`run_eabf` / :func:`run_md` (unbiased when ``cv_module`` is None)."""

    molecular_system: Any
    cv_module: Any
    eabf_settings: Optional[EABFSettings]
    md: MDSettings
    out: Path
    n_steps: int
    resume: bool = False
    initial_state: Optional[EABFState] = None
    positions: Optional[np.ndarray] = None
    cv_units: str = ""
    log: Any = None
    progress: Optional[bool] = None
    description: str = "MD"
    shared_bias: Any = None


def _run(request: _RunRequest) -> EABFRunResult:
    return _SegmentedRun(request).run()


class _SegmentedRun:
    """A run in checkpointed segments: set up (fresh or from the checkpoint), produce, write each segment's outputs
    and checkpoint, finish. See the module docstring for the files."""

    def __init__(self, request: _RunRequest):
        r = request
        md, es = r.md, r.eabf_settings
        self.md, self.es, self.cv_units = md, es, r.cv_units
        self.log = r.log or (lambda *a, **k: None)
        self.progress = md.progress if r.progress is None else r.progress
        self.description = r.description
        out = self.out = Path(r.out)
        (out / "traj").mkdir(parents=True, exist_ok=True)
        (out / "checkpoint").mkdir(parents=True, exist_ok=True)
        self.biased = biased = r.cv_module is not None
        if r.n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {r.n_steps}")
        self.cv_interval = cv_interval = md.check(biased)
        self.fmt = md.trajectory_format
        self.n_steps = -(-int(r.n_steps) // cv_interval) * cv_interval  # whole outer steps
        ms = r.molecular_system
        self.temperature = float(md.temperature if md.temperature is not None else getattr(ms, "temperature", 300.0))
        self.ckpt_json = out / "checkpoint.json"
        self.ck = json.loads(self.ckpt_json.read_text()) if (r.resume and self.ckpt_json.exists()) else None
        initial_state = r.initial_state
        self.shared_bias = r.shared_bias if biased else None
        shared = None
        self.reach_gate = bool(self.es.bias_only_where_reached) if biased else False
        self.smooth = bool(self.es.smooth_bias) if biased else False
        self.smooth_interval = int(self.es.smooth_bias_interval) if biased else 0
        if self.ck is not None:
            run_info = self._check_resumable()
            # a resume applies the bias as the run started (runs older than the settings had neither)
            self.reach_gate = bool(run_info.get("bias_only_where_reached", False))
            self.smooth = bool(run_info.get("smooth_bias", False))
            self.smooth_interval = int(run_info.get("smooth_bias_interval", self.smooth_interval))
            if biased:
                initial_state = EABFState.load(out / "checkpoint" / self.ck["eabf"])
            if self.shared_bias is not None and self.ck.get("shared"):  # the sums applied after that checkpoint
                shared = EABFState.load(out / "checkpoint" / self.ck["shared"])
        elif self.shared_bias is not None:
            shared = self.shared_bias.others()

        self.request = r
        self.pos0 = np.asarray(r.positions if r.positions is not None else ms.positions, dtype=float)
        self.box = getattr(ms, "box", None)
        self._build(initial_state, shared)
        self.solute = _solute_indices(ms)
        self.sub_top = _mdtraj_topology(ms).subset(self.solute)
        self.colvar_path = out / "COLVAR"
        self.n_mol = ms.system.getNumParticles()
        self.meta = {"cv_units": self.cv_units, "temperature": str(self.temperature),
                     "czar_min_count": str(int(es.czar_min_count)) if biased else "1"}
        self.state: Optional[EABFState] = None  # the eABF state last read out ...
        self.state_step = -1  # ... and at which production step
        self.writer: Optional[ColvarWriter] = None

    def _build(self, initial_state: Optional[EABFState], shared: Optional[EABFState]) -> None:
        """System copy, eABF force (``initial_state``, the other walkers' ``shared`` sums), integrator, Context."""
        import openmm

        r, md, es = self.request, self.md, self.es
        self.system = copy_system(r.molecular_system.system)
        self.eabf = None
        # the platform first: whether the force is captured in a CUDA graph depends on it
        self.platform, props = _platform(md, self.system.getNumParticles() + (len(np.atleast_1d(es.grid_min))
                                                                              if self.biased else 0))
        if self.biased:
            graphs, why = resolve_cuda_graphs(es.cuda_graphs, self.platform.getName(), r.cv_module)
            if self.platform.getName() == "CUDA":
                self.log(why)
            # the compiled CPU step: None lets the force use it where it can ("auto" on a CPU platform)
            on_cpu = self.platform.getName() in ("CPU", "Reference")
            kernel = {"on": True, "off": False}.get(es.cpu_kernel, None if on_cpu else False)
            if kernel and not on_cpu:
                raise ValueError(f"eabf.cpu_kernel: on, but the platform is {self.platform.getName()} (the "
                                 "compiled step runs on the CPU and Reference platforms)")
            self.eabf = ExtendedABF(
                self.system, r.cv_module, es.grid_min, es.grid_max, es.bins, es.kappa, periodic=es.periodic,
                extendedMass=es.extended_mass, extendedPeriod=es.extended_period, fullSamples=es.full_samples,
                minSamples=es.min_samples, wallKappa=es.wall_kappa, forceGroup=es.force_group, positions=self.pos0,
                box=self.box, initialState=initial_state, useCUDAGraphs=graphs,
                czarBins=es.czar_bins, sharedState=shared, closePeriodicBias=es.close_periodic_bias,
                biasOnlyWhereReached=self.reach_gate, smoothBias=self.smooth,
                smoothBiasInterval=self.smooth_interval, cpuKernel=kernel,
            )
            if on_cpu:
                self.log(self.eabf.cpuKernelNote)
        self.shares = shared is not None  # the force applies other walkers' sums
        self.integrator = make_integrator(self.system, self.eabf, self.temperature, md.friction, md.timestep,
                                          self.cv_interval)
        self.integrator.setRandomNumberSeed(int(md.seed))
        self.context = openmm.Context(self.system, self.integrator, self.platform, props)

    def _apply_shared(self, done: int) -> None:
        """Shared bias: continue from the checkpoint just written with a force that applies the sums saved with it."""
        checkpoint = self.context.createCheckpoint()
        ck = json.loads(self.ckpt_json.read_text())
        shared = EABFState.load(self.out / "checkpoint" / ck["shared"]) if ck.get("shared") else None
        if shared is None and not self.shares:
            return  # no other walker has written yet: the force stays as it is
        own = self._read_state(done)
        del self.context, self.integrator
        self._build(own, shared)
        self.context.loadCheckpoint(checkpoint)
        self.eabf.setSampling(self.context, True)

    def _check_resumable(self) -> Dict[str, Any]:
        """A resume must keep the cv_interval and report_interval the run was started with; the run's ``run.json``
        ({} when absent)."""
        if not (self.out / "run.json").exists():
            return {}
        run_info = json.loads((self.out / "run.json").read_text())
        started = int(run_info.get("cv_interval", 1))
        if started != self.cv_interval:
            raise ValueError(f"{self.out} was started with cv_interval={started}; resume it with the same value, "
                             f"got cv_interval={self.cv_interval}")
        if int(run_info["report_interval"]) != self.md.report_interval:  # frames and COLVAR rows must stay in step
            raise ValueError(f"{self.out} was started with report_interval={run_info['report_interval']}; resume it "
                             f"with the same value, got report_interval={self.md.report_interval}")
        return run_info

    def _extend(self, positions: np.ndarray) -> np.ndarray:
        return self.eabf.extendPositions(positions, self.box) if self.biased else positions

    # ------------------------------------------------------------------ start
    def _start_fresh(self) -> Tuple[int, int]:
        """Minimise and equilibrate with sampling off, clear stale outputs, write ``run.json``; (segment, step)."""
        import openmm

        md, context, out = self.md, self.context, self.out
        if self.box is not None:
            context.setPeriodicBoxVectors(*np.asarray(self.box))
        context.setPositions(self._extend(self.pos0))
        if self.biased:
            self.eabf.setSampling(context, False)
        if md.minimize:
            openmm.LocalEnergyMinimizer.minimize(context, 10.0, int(md.minimize_max_iterations))
            # lambda follows xi during minimisation (it is coupled); restart it exactly at xi
            p = np.asarray(context.getState(getPositions=True).getPositions(asNumpy=True)._value)
            context.setPositions(self._extend(p[:self.n_mol]))
        context.setVelocitiesToTemperature(self.temperature, int(md.seed))
        if md.equilibration_steps > 0:
            self.integrator.step(-(-int(md.equilibration_steps) // self.cv_interval))
        context.setTime(0.0)
        context.setStepCount(0)
        if self.biased:
            self.eabf.setSampling(context, True)
        for old in (out / "traj").glob("seg_*"):  # fresh run: stale segments would be mixed in
            old.unlink()
        (out / HALF_STATE).unlink(missing_ok=True)
        for old in (out / BLOCKS_DIR).glob("step_*.npz"):
            old.unlink()
        if self.biased:
            self.writer = ColvarWriter(self.colvar_path, self.eabf.d, append=False, units=self.cv_units)
        atomic_write_json(out / "run.json", {
            "biased": self.biased, "temperature": self.temperature, "timestep": md.timestep,
            "solute": self.solute.tolist(), "report_interval": md.report_interval, "n_steps": self.n_steps,
            "trajectory_format": self.fmt, "n_molecule": self.n_mol, "cv_interval": self.cv_interval,
            "threads": threads_in_effect(self.context), "bias_only_where_reached": self.reach_gate,
            "smooth_bias": self.smooth, "smooth_bias_interval": self.smooth_interval,
            "cpu_kernel": bool(self.eabf is not None and self.eabf.cpuKernel),
        })
        return 0, 0

    def _resume(self) -> Tuple[int, int]:
        """Load the checkpoint (the XML State on another platform), drop outputs past it; (segment, step)."""
        import openmm

        ck, out, context = self.ck, self.out, self.context
        try:
            context.loadCheckpoint((out / "checkpoint" / ck["chk"]).read_bytes())
        except Exception as exc:  # different platform/build: fall back to the portable State
            self.log(f"checkpoint {ck['chk']} not loadable here ({exc}); using the XML State (not bit-reproducible)")
            context.setState(openmm.XmlSerializer.deserialize((out / "checkpoint" / ck["xml"]).read_text()))
        if self.biased:
            self.eabf.setSampling(context, True)
        seg, done = int(ck["segment"]) + 1, int(ck["step"])
        if self.biased:
            _truncate_colvar(self.colvar_path, done // self.md.report_interval)  # one row per report_interval
            for old in (out / BLOCKS_DIR).glob("step_*.npz"):  # written after the checkpoint: redone below
                if _block_step(old) > done:
                    old.unlink()
            self.writer = ColvarWriter(self.colvar_path, self.eabf.d, append=True, units=self.cv_units)
        self.log(f"resuming {out} at step {done} (segment {seg})")
        return seg, done

    def _progress_bar(self, done: int):
        if not self.progress:
            return None
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover
            return None
        # Progress in simulated ns (what users plan in), with ns/day and tqdm's ETA.
        ns_per_step = self.md.timestep * 1e-3
        return tqdm(total=self.n_steps * ns_per_step, initial=min(done, self.n_steps) * ns_per_step,
                    desc=self.description, leave=False,
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.4f}/{total:.4f} ns [{elapsed}<{remaining}{postfix}]",
                    # Redirected to a file, every redraw is kept: one line every 30 s, not per report.
                    mininterval=0.1 if sys.stderr.isatty() else 30.0)

    def _read_state(self, done: int) -> EABFState:
        """The eABF state at production step ``done`` (one read-out per step at most)."""
        if self.state_step != done:  # a read-out costs one force evaluation per slot chunk: reuse the block's
            self.state = self.eabf.getState(self.context)
            self.state.meta.update(self.meta)
            self.state_step = done
        return self.state

    # ------------------------------------------------------------------ production
    def run(self) -> EABFRunResult:
        md, out, context = self.md, self.out, self.context
        seg, done = self._start_fresh() if self.ck is None else self._resume()
        # block ends in whole report intervals (frames then fall into one block each)
        n_blocks = max(1, int(md.error_blocks))
        block_steps = max(1, -(-self.n_steps // (n_blocks * md.report_interval))) * md.report_interval
        if self.biased:
            (out / BLOCKS_DIR).mkdir(exist_ok=True)
        trajectories = sorted((out / "traj").glob("seg_*." + self.fmt))
        bar = self._progress_bar(done)
        ns_per_step = md.timestep * 1e-3
        t_wall = time.perf_counter()
        steps_timed = 0
        ns_day = float("nan")
        periodic = self.system.usesPeriodicBoundaryConditions()
        try:
            while done < self.n_steps:
                frames, times, boxes = [], [], []
                left = min(md.segment_steps, self.n_steps - done)
                while left > 0:
                    k = min(md.report_interval, left)
                    self.integrator.step(k // self.cv_interval)  # outer steps (= inner steps without MTS)
                    left -= k
                    done += k
                    steps_timed += k
                    if (context.getStepCount() * self.cv_interval) % md.report_interval == 0:
                        st = context.getState(getPositions=True)
                        pos = np.asarray(st.getPositions(asNumpy=True)._value)
                        frames.append(pos[self.solute])
                        times.append(st.getTime()._value)
                        if periodic:
                            boxes.append(np.asarray(st.getPeriodicBoxVectors(asNumpy=True)._value))
                        if self.biased:
                            xi, lam, fb = self.eabf.getInstantaneous(context)
                            self._check_sane(done, pos, xi, lam)
                            self.writer.write(times[-1], xi, lam, fb)
                        else:
                            self._check_sane(done, pos)
                    if self.biased and (done % block_steps == 0 or done == self.n_steps):
                        self._read_state(done).save(out / BLOCKS_DIR / f"step_{done:010d}.npz", compressed=True)
                    elapsed = time.perf_counter() - t_wall
                    ns_day = steps_timed * ns_per_step / max(elapsed, 1e-9) * 86400.0
                    if bar is not None:
                        # set n from the integer step count: summing float increments overshoots the total
                        bar.n = done * ns_per_step
                        bar.set_postfix_str(f"{ns_day:.1f} ns/day", refresh=False)
                        bar.update(0)  # redraws at most every mininterval
                if frames:
                    path = out / "traj" / f"seg_{seg:05d}.{self.fmt}"
                    _write_traj(path, np.array(frames), self.sub_top, np.array(times),
                                np.array(boxes) if boxes else None)
                    if path not in trajectories:
                        trajectories.append(path)
                self._end_segment(seg, done)
                if self.shared_bias is not None and done < self.n_steps:
                    self._apply_shared(done)
                    context = self.context
                seg += 1
        finally:
            if self.writer is not None:
                self.writer.close()
            if bar is not None:
                bar.close()
        return self._finish(done, trajectories, ns_day)

    def _check_sane(self, step: int, pos: np.ndarray, xi: Optional[np.ndarray] = None,
                    lam: Optional[np.ndarray] = None) -> None:
        """Raise :class:`SimulationBlowUp` if the state at ``step`` is non-finite or lambda ran far past its walls.

        The walls hold a non-periodic lambda near the grid; one more grid span beyond it means the atoms, and lambda
        with them, were thrown out by forces the time step could not follow.
        """
        bad = None
        if not np.all(np.isfinite(pos)):
            bad = "non-finite atom positions"
        elif xi is not None and not (np.all(np.isfinite(xi)) and np.all(np.isfinite(lam))):
            bad = f"a non-finite CV value ({np.asarray(xi).tolist()}) or extended variable ({np.asarray(lam).tolist()})"
        elif lam is not None:
            lo, hi, per = self.eabf.gridMin, self.eabf.gridMax, self.eabf.periodic
            span = hi - lo
            out = ~per & ((lam < lo - span) | (lam > hi + span))
            if np.any(out):
                bad = (f"the extended variable at {np.asarray(lam).tolist()}, more than a grid span outside the grid "
                       f"[{lo.tolist()}, {hi.tolist()}] and its walls")
        if bad is not None:
            raise SimulationBlowUp(
                f"{self.out}: the simulation blew up by step {step}: {bad}. The last checkpoint (step "
                f"{steps_done(self.out)}) is intact, but a resume replays the same steps. Likely causes: a coupling "
                f"kappa too stiff for the time step where the CV is steep, or a bias that drives lambda where the CV "
                f"cannot follow (grid wider than the CV's range). Try a lower eabf.kappa, md.timestep or "
                f"md.cv_interval, or a grid that the CV's values fill.")

    def _end_segment(self, seg: int, done: int) -> None:
        """Grids, accumulators and the half-time state, then the checkpoint; ``checkpoint.json`` last (the commit
        point), after which the previous segment's checkpoint files go."""
        import openmm

        out, context = self.out, self.context
        names = {"chk": f"seg_{seg:05d}.chk", "xml": f"seg_{seg:05d}.xml"}
        state = None
        if self.biased:
            self.writer.flush()
            state = self._read_state(done)
            write_eabf_grids(out / "eabf", state, self.temperature, self.cv_units)
            names["eabf"] = f"seg_{seg:05d}.eabf.npz"
            state.save(out / "checkpoint" / names["eabf"])
            # Written once: after a crash the redone segment reproduces it, so an existing file stays valid.
            if 2 * done >= self.n_steps and done < self.n_steps and not (out / HALF_STATE).exists():
                # its production step says which frames its samples came with (the first half of the samples)
                replace(state, meta={**state.meta, HALF_STEP_KEY: str(done)}).save(out / HALF_STATE)
            if self.shared_bias is not None:  # publish ours, keep the others' sums for the next segment
                self.shared_bias.publish(state)
                shared = self.shared_bias.others()
                if shared is not None:
                    names["shared"] = f"seg_{seg:05d}.shared.npz"
                    shared.save(out / "checkpoint" / names["shared"])
        with atomic_path(out / "checkpoint" / names["chk"]) as tmp:
            tmp.write_bytes(context.createCheckpoint())
        xml_state = context.getState(getPositions=True, getVelocities=True, getParameters=True,
                                     getIntegratorParameters=True)
        atomic_write_text(out / "checkpoint" / names["xml"], openmm.XmlSerializer.serialize(xml_state))
        old = json.loads(self.ckpt_json.read_text()) if self.ckpt_json.exists() else None
        atomic_write_json(self.ckpt_json, {
            "segment": seg, "step": done, "time": float(context.getTime()._value),
            "n_samples": state.n_samples if self.biased else 0, "temperature": self.temperature,
            "platform": self.platform.getName(), **names,
        })
        if old is not None and old.get("segment") != seg:
            for key in ("chk", "xml", "eabf", "shared"):
                p = out / "checkpoint" / old.get(key, "")
                if p.is_file():
                    p.unlink()

    def _finish(self, done: int, trajectories: List[Path], ns_day: float) -> EABFRunResult:
        """Final grids (a resume of a finished run reads the state once more) and positions; the result."""
        out = self.out
        grids: Dict[str, np.ndarray] = {}
        state = None
        if self.biased:
            state = self._read_state(done)
            grids = write_eabf_grids(out / "eabf", state, self.temperature, self.cv_units)
        final = np.asarray(self.context.getState(getPositions=True).getPositions(asNumpy=True)._value)
        with atomic_path(out / "final_positions.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, final[:self.n_mol])
        result = EABFRunResult(
            out_dir=out, n_steps=done, state=state, colvar=self.colvar_path, trajectories=sorted(trajectories),
            grids=grids, grid_prefix=out / "eabf", temperature=self.temperature, ns_per_day=ns_day,
            positions=final, platform=self.platform.getName(),
        )
        del self.context, self.integrator
        return result


# ------------------------------------------------------------------------------------------------------------
# reading a finished (or partial) run back
# ------------------------------------------------------------------------------------------------------------
def steps_done(out_dir) -> int:
    """Production steps covered by the last checkpoint of ``out_dir`` (0 when none)."""
    p = Path(out_dir) / "checkpoint.json"
    return int(json.loads(p.read_text())["step"]) if p.exists() else 0


def final_positions(out_dir) -> np.ndarray:
    """Molecule positions (N, 3) nm at the end of the run in ``out_dir`` (from the last checkpoint)."""
    out = Path(out_dir)
    ck = json.loads((out / "checkpoint.json").read_text())
    p = out / "final_positions.npy"
    if p.exists() and int(ck["step"]) == int(json.loads((out / "run.json").read_text()).get("n_steps", -1)):
        return np.load(p)
    import openmm

    st = openmm.XmlSerializer.deserialize((out / "checkpoint" / ck["xml"]).read_text())
    pos = np.asarray(st.getPositions(asNumpy=True)._value)
    n_mol = int(json.loads((out / "run.json").read_text()).get("n_molecule", len(pos)))
    return pos[:n_mol]


@contextmanager
def _quiet_native_stdout():
    """Silence file descriptor 1 (output of native code such as VMD's molfile plugins) for the block."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


class FreeEnergyEstimates:
    """Estimators on an eABF run's accumulators: naive F_kappa, CZAR A(xi), reweighting weights, drift.

    Shared by one run directory (:class:`RunOutputs`) and independent walkers pooled (:class:`PooledRuns`);
    subclasses provide ``temperature``, ``state``, ``half_state``, ``colvar_lambda()`` and ``colvar_xi()``.
    """

    temperature: float
    state: Optional[EABFState]
    half_state: Optional[EABFState]

    def colvar_lambda(self) -> np.ndarray:  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    def colvar_xi(self) -> np.ndarray:  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    def f_kappa(self, state: Optional[EABFState] = None) -> np.ndarray:
        """Integrated naive estimate F_kappa on the lambda grid (kJ/mol), of ``state`` (default: the final one)."""
        st = self.state if state is None else state
        return st.naive_free_energy()

    def czar_pmf(self, state: Optional[EABFState] = None):
        """(centres per dimension, CZAR free energy on the xi grid, kJ/mol), of ``state`` (default: the final one)."""
        st = self.state if state is None else state
        return st.z_centers(), st.czar_free_energy(self.temperature)

    def _grid(self, estimator: str, st: EABFState):
        """(grid_min, bin width) of the grid the estimator's free energy lives on."""
        return st.grid_min, (st.z_bin_width if estimator == "czar" else st.bin_width)

    def free_energy(self, estimator: str = "czar", state: Optional[EABFState] = None) -> np.ndarray:
        """Grid free energy of an estimator (kJ/mol): ``"czar"``, A(xi) on the xi grid; ``"naive"``, F_kappa(lambda)."""
        _check_estimator(estimator)
        return self.czar_pmf(state)[1] if estimator == "czar" else self.f_kappa(state)

    def _points(self, estimator: str, lambdas: Optional[np.ndarray], xis: Optional[np.ndarray]) -> np.ndarray:
        """Where each frame reads the estimator's grid: xi for CZAR, lambda for F_kappa (COLVAR when not given)."""
        if estimator == "czar":
            return self.colvar_xi() if xis is None else xis
        return self.colvar_lambda() if lambdas is None else lambdas

    def free_energy_drift(self, estimator: str = "czar", lambdas: Optional[np.ndarray] = None,
                          xis: Optional[np.ndarray] = None) -> Optional[Dict[str, float]]:
        """How much the estimator's free energy moved over the second half of the run, where the run went.

        Returns ``{"rms": kJ/mol, "frames": fraction of frames compared}`` from
        :func:`aesample.estimators.free_energy_drift` (the free energy at half time vs at the end, at the frames'
        xi for CZAR or lambda for F_kappa), or None when there is no half-time state.
        """
        from .estimators import free_energy_drift

        _check_estimator(estimator)
        half = self.half_state
        if half is None:
            return None
        st = self.state
        pts = self._points(estimator, lambdas, xis)
        rms, frac = free_energy_drift(self.free_energy(estimator, half), self.free_energy(estimator, st), pts,
                                      *self._grid(estimator, st), st.periodic)
        return {"rms": rms, "frames": frac}

    def first_half_frames(self) -> Optional[np.ndarray]:
        """Per COLVAR row/frame, True where it was recorded up to the half-time state (None without one)."""
        raise NotImplementedError  # pragma: no cover - provided by subclasses

    def delta_f_halves(self, labels: np.ndarray, estimator: str = "czar", lambdas: Optional[np.ndarray] = None,
                       xis: Optional[np.ndarray] = None) -> Optional[Dict[str, float]]:
        """Delta F between two basins from the first and from the second half of the samples, separately (kJ/mol).

        ``first``: the half-time accumulators (:attr:`half_state`) and the frames recorded up to then;
        ``second``: the accumulators gathered after it (final minus half-time) and the later frames. Each is the
        estimate a run of that half alone would give with the bias it had (``labels`` per frame: 1 in basin B,
        0 in A, -1 in neither; ``F_B - F_A``, NaN where a half has no weight in a basin). Stationary sampling
        gives two estimates that differ by noise, about twice the whole run's error; a trend common to all
        walkers (a slow relaxation that the bias's build-up started) shows as a difference no walkers' scatter
        and no resampling of time blocks sees. None without a half-time state.
        """
        from .estimators import kT as kT_of

        _check_estimator(estimator)
        first, half = self.first_half_frames(), self.half_state
        if first is None or half is None:
            return None
        labels = np.asarray(labels)
        points = np.asarray(self._points(estimator, lambdas, xis))  # xi for CZAR, lambda for F_kappa
        key = "xis" if estimator == "czar" else "lambdas"
        late = EABFState.weighted_sum([(1.0, self.state), (-1.0, half)])
        out = {}
        for name, state, rows in (("first", half, first), ("second", late, ~first)):
            try:
                w = self.reweighting_weights(estimator, state, **{key: points[rows]})
            except ValueError:  # no frame of this half in a bin its accumulators estimate
                out[name] = float("nan")
                continue
            out[name] = _delta_f(w, labels[rows], kT_of(self.temperature))
        return out

    def block_increments(self) -> List[Tuple[np.ndarray, List[EABFState]]]:
        """Per run: (the block index of each COLVAR row/frame, each block's own accumulators as an EABFState).

        Blocks come from the cumulative snapshots in ``blocks/`` (differences of consecutive ones). Runs without
        snapshots give one block holding the whole run.
        """
        raise NotImplementedError  # pragma: no cover - provided by subclasses

    def bootstrap(self, n_boot: int = 100, seed: int = 0):
        """Block-bootstrap replicates of the run: yields ``(state, multiplicity)`` ``n_boot`` times.

        Each replicate gives the time blocks of every run (walkers separately) random weights with mean 1
        (Bayesian bootstrap: Dirichlet), sums the blocks' accumulators with them into ``state`` and gives each frame
        its block's weight (``multiplicity``, aligned with COLVAR rows in run order). An estimate recomputed from
        every replicate -- a free energy from ``state``, a Delta F from frames weighted by ``multiplicity`` times
        their reweighting weight -- scatters as the estimate does between independent runs, as long as the blocks
        are longer than the run's correlation time.
        """
        yield from self._bootstrap(self.block_increments(), n_boot, seed)

    @staticmethod
    def _bootstrap(runs, n_boot: int, seed: int):
        rng = np.random.default_rng(seed)
        for _ in range(int(n_boot)):
            parts, mult = [], []
            for frame_block, blocks in runs:
                # Bayesian bootstrap (Rubin 1981): Dirichlet block weights, mean 1. Integer draws drop a third
                # of the blocks from each replicate, which on a fine CZAR grid thins the fringe and the barrier
                # bins and inflated the error bar ~2x over the walkers' spread on the synthetic test model.
                draw = rng.dirichlet(np.ones(len(blocks))) * len(blocks)
                parts.extend(zip(draw.tolist(), blocks))
                mult.append(draw[frame_block])
            yield EABFState.weighted_sum(parts), np.concatenate(mult)

    def free_energy_error(self, estimator: str = "czar", n_boot: int = 100, seed: int = 0,
                          lambdas: Optional[np.ndarray] = None, xis: Optional[np.ndarray] = None,
                          delta_f_labels: Optional[np.ndarray] = None, visit_labels: Optional[np.ndarray] = None,
                          visit_min_dwell: int = 5) -> Dict[str, Any]:
        """Block-bootstrap error bars of the estimator's free energy (kJ/mol) and, optionally, of a Delta F.

        ``rms``: the bootstrap standard deviation of the free energy at each frame's grid point (constant offset
        of each replicate removed over the frames), root-mean-square over the frames: the same "where the run
        went" measure as :meth:`free_energy_drift`. With ``delta_f_labels`` (per frame: 1 in basin B, 0 in basin
        A, -1 in neither), ``delta_f`` is ``F_B - F_A = -kT ln(P_B / P_A)`` from the reweighted frames and
        ``delta_f_error`` its bootstrap standard deviation (NaN when a replicate leaves a basin empty). The
        replicates recompute the weights of frames by their replicate's free energy and histogram, so errors of
        the free energy along xi and of the frames' make-up at fixed xi both enter.

        Blocks shorter than the time between crossings of the two basins make the bootstrap miss most of the error
        of their population ratio. So with ``delta_f_labels`` the error the basin visits allow is computed too
        (``delta_f_error_visits``, :func:`aesample.estimators.visit_delta_f_error` on ``visit_labels`` --
        default ``delta_f_labels``; -1 for frames in neither basin -- with ``visit_min_dwell`` frames to commit
        to a basin; ``delta_f_visits`` has its record), and ``delta_f_error`` is the bootstrap's
        (``delta_f_error_bootstrap``) while the runs hold at least as many basin visits as time blocks (a block
        then spans a crossing or more, the bootstrap's own condition), else the larger of the two
        (``delta_f_error_from`` says which). When the visits' error is taken, ``rms`` adds the missing part,
        ``sqrt(err_visits^2 - err_bootstrap^2)``, as a step between the basins: ``sqrt(f0 f1)`` times it, f0, f1
        the basins' shares of the frames (``rms_bootstrap`` keeps the bootstrap's own value).
        """
        from .estimators import kT as kT_of
        from .estimators import values_in_bins

        _check_estimator(estimator)
        st = self.state
        pts = np.asarray(self._points(estimator, lambdas, xis), dtype=np.float64)
        pts = pts[:, None] if pts.ndim == 1 else pts
        gmin, width = self._grid(estimator, st)
        kT = kT_of(self.temperature)
        values, dfs = [], []
        runs = self.block_increments()
        for state_b, mult in self._bootstrap(runs, n_boot, seed):
            f = self.free_energy(estimator, state_b)
            values.append(values_in_bins(f, gmin, width, st.periodic, pts))
            if delta_f_labels is not None:
                try:
                    w = self.reweighting_weights(estimator, state_b, lambdas=lambdas, xis=xis) * mult
                except ValueError:
                    dfs.append(np.nan)
                    continue
                dfs.append(_delta_f(w, delta_f_labels, kT))
        v = np.asarray(values)
        ok = np.all(np.isfinite(v), axis=0)
        out: Dict[str, Any] = {"rms": float("nan"), "frames": float(ok.mean()) if v.size else 0.0,
                               "n_boot": int(n_boot), "blocks": [len(b) for _, b in runs]}
        if ok.any():
            vv = v[:, ok] - v[:, ok].mean(axis=1, keepdims=True)
            out["rms"] = float(np.sqrt(np.mean(np.var(vv, axis=0, ddof=1))))
        out["rms_bootstrap"] = out["rms"]
        if delta_f_labels is not None:
            w = self.reweighting_weights(estimator, lambdas=lambdas, xis=xis)
            out["delta_f"] = _delta_f(w, delta_f_labels, kT)
            d = np.asarray(dfs)
            boot = float(np.std(d, ddof=1)) if np.all(np.isfinite(d)) and len(d) > 1 else float("nan")
            out.update(_visit_error(delta_f_labels if visit_labels is None else visit_labels, w, kT,
                                    [len(fb) for fb, _ in runs], visit_min_dwell))
            out["delta_f_error_bootstrap"] = boot
            n_visits = sum(out["delta_f_visits"]["visits"])  # over all runs, as the blocks
            crossings_resolved = np.isfinite(boot) and n_visits >= sum(len(b) for _, b in runs)
            out["delta_f_error"] = boot if crossings_resolved else float(np.fmax(boot, out["delta_f_error_visits"]))
            out["delta_f_error_from"] = "bootstrap" if out["delta_f_error"] == boot else "visits"
            missing = out["delta_f_error"] ** 2 - (boot if np.isfinite(boot) else 0.0) ** 2
            lab = np.asarray(delta_f_labels)
            f0, f1 = float(np.mean(lab == 0)), float(np.mean(lab == 1))
            if np.isfinite(out["rms"]) and np.isfinite(missing) and missing > 0:
                out["rms"] = float(np.sqrt(out["rms"] ** 2 + missing * f0 * f1))
        return out

    def reweighting_weights(self, estimator: str = "czar", state: Optional[EABFState] = None,
                            lambdas: Optional[np.ndarray] = None, xis: Optional[np.ndarray] = None) -> np.ndarray:
        """Per-frame Boltzmann weights, normalised, from ``state`` (default: the final one).

        ``estimator="czar"`` (default): ``w ∝ exp(-beta A(xi)) / n(xi)``
        (:func:`aesample.estimators.czar_reweighting_weights`); ``"naive"``: ``w ∝ exp(-beta F_kappa(lambda))``
        (:func:`aesample.estimators.reweighting_weights`). Frame values from COLVAR unless given.
        """
        from .estimators import czar_reweighting_weights, reweighting_weights

        _check_estimator(estimator)
        st = self.state if state is None else state
        pts = self._points(estimator, lambdas, xis)
        if estimator == "naive":
            return reweighting_weights(pts, self.f_kappa(st), st.grid_min, st.bin_width, self.temperature, st.periodic)
        return czar_reweighting_weights(pts, self.czar_pmf(st)[1], st.zcount, st.grid_min, st.z_bin_width,
                                        self.temperature, st.periodic)


def _delta_f(weights: np.ndarray, labels: np.ndarray, kT: float) -> float:
    """``-kT ln(P_B / P_A)`` from per-frame weights and labels (1: B, 0: A); NaN if a basin has no weight."""
    labels = np.asarray(labels)
    pa, pb = float(weights[labels == 0].sum()), float(weights[labels == 1].sum())
    return float(-kT * np.log(pb / pa)) if pa > 0 and pb > 0 else float("nan")


def _visit_error(labels: np.ndarray, weights: np.ndarray, kT: float, run_lengths: List[int],
                 min_dwell: int) -> Dict[str, Any]:
    """``delta_f_error_visits`` and ``delta_f_visits`` of :meth:`FreeEnergyEstimates.free_energy_error`."""
    from .estimators import visit_delta_f_error

    labels = np.asarray(labels)
    runs = run_lengths if sum(run_lengths) == len(labels) else 1  # frames not aligned with blocks: one run
    v = visit_delta_f_error(labels, weights, kT, n_runs=runs, min_dwell=min_dwell)
    return {"delta_f_error_visits": v["error"],
            "delta_f_visits": {k: v[k] for k in ("visits", "cv2", "transitions")}}


def _block_files(out_dir: Path, checkpoint_step: int) -> List[Tuple[int, Path]]:
    """(production step, file) of the block snapshots of ``out_dir`` up to ``checkpoint_step``, in step order."""
    files = sorted((out_dir / BLOCKS_DIR).glob("step_*.npz"), key=_block_step)
    return [(_block_step(f), f) for f in files if _block_step(f) <= checkpoint_step]


def _block_increments_of(out_dir: Path, final: EABFState, n_rows: int, report_interval: int, checkpoint_step: int):
    """(block index per COLVAR row, per-block accumulators) of one run directory."""
    files = _block_files(out_dir, checkpoint_step)
    if not files:
        return np.zeros(n_rows, dtype=int), [final]
    steps = np.array([step for step, _ in files])
    cumulative = [EABFState.load(f) for _, f in files]
    if steps[-1] < checkpoint_step:  # the run went on past its last block end: the rest is one more block
        steps = np.append(steps, checkpoint_step)
        cumulative.append(final)
    blocks, prev = [], None
    for st in cumulative:
        if prev is None:
            blocks.append(st)
        else:
            blocks.append(EABFState.weighted_sum([(1, st), (-1, prev)]))
        prev = st
    row_steps = (np.arange(n_rows) + 1) * int(report_interval)
    frame_block = np.minimum(np.searchsorted(steps, row_steps, side="left"), len(blocks) - 1)
    return frame_block, blocks


@dataclass
class RunOutputs(FreeEnergyEstimates):
    """A run directory read back: trajectory, COLVAR, eABF state, estimators.

    A snapshot: each file is read once, on first use, and kept (``state``, ``half_state``, the COLVAR); after the
    run continues, read it again with :func:`load_result`.
    """

    out_dir: Path
    run: Dict[str, Any]
    checkpoint: Dict[str, Any]
    _colvar: Optional[Tuple[List[str], np.ndarray]] = field(default=None, init=False, repr=False, compare=False)

    @property
    def temperature(self) -> float:
        return float(self.run["temperature"])

    @cached_property
    def state(self) -> Optional[EABFState]:
        """The eABF accumulators at the last checkpoint (None for an unbiased run)."""
        name = self.checkpoint.get("eabf")
        return EABFState.load(self.out_dir / "checkpoint" / name) if name else None

    def trajectory_files(self) -> List[Path]:
        fmt = self.run.get("trajectory_format", "dcd")
        return sorted((self.out_dir / "traj").glob(f"seg_*.{fmt}"))

    def load_trajectory(self, topology=None):
        """All segments joined (solute atoms). ``topology``: mdtraj topology of the solute or of the whole system."""
        import mdtraj

        solute = np.asarray(self.run["solute"], dtype=int)
        if topology is None:
            raise ValueError("load_trajectory needs the mdtraj topology of the system")
        if topology.n_atoms != len(solute):
            topology = topology.subset(solute)
        files = [str(p) for p in self.trajectory_files()]
        if not files:
            raise FileNotFoundError(f"{self.out_dir}/traj: no trajectory segments")
        with _quiet_native_stdout():  # mdtraj's DCD plugin prints two lines per file from C
            return mdtraj.load(files, top=topology)

    def colvar(self) -> Tuple[List[str], np.ndarray]:
        """(fields, rows) of the run's COLVAR, read once."""
        if self._colvar is None:
            self._colvar = read_colvar(self.out_dir / "COLVAR")
        return self._colvar

    def colvar_lambda(self) -> np.ndarray:
        """lambda per frame (T, d), aligned with the trajectory frames."""
        fields, data = self.colvar()
        return data[:, [i for i, f in enumerate(fields) if f.startswith("lambda_")]]

    def colvar_xi(self) -> np.ndarray:
        fields, data = self.colvar()
        return data[:, [i for i, f in enumerate(fields) if f.startswith("xi_")]]

    @cached_property
    def half_state(self) -> Optional[EABFState]:
        """eABF state at the first checkpoint past half of the run (None: unbiased, or a single segment)."""
        p = self.out_dir / HALF_STATE
        return EABFState.load(p) if p.is_file() else None

    def first_half_frames(self) -> Optional[np.ndarray]:
        half = self.half_state
        if half is None or self.state is None:
            return None
        every = int(self.run["report_interval"])
        step = half.meta.get(HALF_STEP_KEY)
        if step is None:  # saved before the step was recorded: from its share of the samples, to a whole row
            end = int(self.checkpoint["step"])
            step = every * round(end * half.n_samples / max(1, self.state.n_samples) / every)
        return (np.arange(len(self.colvar_xi())) + 1) * every <= int(step)

    def block_increments(self):
        return [_block_increments_of(self.out_dir, self.state, len(self.colvar_xi()), int(self.run["report_interval"]),
                                     int(self.checkpoint["step"]))]

    def block_snapshots(self) -> List[Tuple[int, Path]]:
        """The cumulative eABF states saved at the time-block ends (``blocks/``) up to the last checkpoint, as
        (production step, file) in step order: what the run knew at each of those times
        (``EABFState.load(file)``). Empty for an unbiased run or one without blocks."""
        return _block_files(self.out_dir, int(self.checkpoint["step"]))


@dataclass
class PooledRuns(FreeEnergyEstimates):
    """Independent eABF walkers along the same CV and grid, read as one sample.

    The accumulators are summed (:meth:`aesample.eabf.EABFState.pooled`), COLVAR rows and frames are
    concatenated in walker order, so the estimators of :class:`FreeEnergyEstimates` use every walker's samples.
    The half-time state (for the drift) is the sum of the walkers' half-time states, None if one lacks it.
    """

    runs: List[RunOutputs]

    def __post_init__(self):
        if not self.runs:
            raise ValueError("PooledRuns: no runs")
        temps = {r.temperature for r in self.runs}
        if len(temps) > 1:
            raise ValueError(f"PooledRuns: walkers at different temperatures {sorted(temps)} "
                             f"({', '.join(str(r.out_dir) for r in self.runs)})")

    @property
    def temperature(self) -> float:
        return self.runs[0].temperature

    @staticmethod
    def _pool(states: List[Optional[EABFState]]) -> Optional[EABFState]:
        return None if any(st is None for st in states) else EABFState.pooled(states)

    @cached_property
    def state(self) -> Optional[EABFState]:
        """The walkers' accumulators summed (pooled once)."""
        return self._pool([r.state for r in self.runs])

    @cached_property
    def half_state(self) -> Optional[EABFState]:
        return self._pool([r.half_state for r in self.runs])

    @cached_property
    def _colvar_lambda(self) -> np.ndarray:
        return np.concatenate([r.colvar_lambda() for r in self.runs])

    @cached_property
    def _colvar_xi(self) -> np.ndarray:
        return np.concatenate([r.colvar_xi() for r in self.runs])

    def colvar_lambda(self) -> np.ndarray:
        return self._colvar_lambda.copy()

    def colvar_xi(self) -> np.ndarray:
        return self._colvar_xi.copy()

    def run_index(self) -> np.ndarray:
        """Which walker each pooled COLVAR row came from (0-based, in the order of ``runs``), (n_rows,) int."""
        return np.repeat(np.arange(len(self.runs)), [len(r.colvar_xi()) for r in self.runs])

    def first_half_frames(self) -> Optional[np.ndarray]:
        parts = [r.first_half_frames() for r in self.runs]
        return None if any(p is None for p in parts) else np.concatenate(parts)

    def block_increments(self):
        return [b for r in self.runs for b in r.block_increments()]

    def free_energy_sem(self, estimator: str = "czar", lambdas: Optional[np.ndarray] = None,
                        xis: Optional[np.ndarray] = None) -> Optional[Dict[str, float]]:
        """Standard error of the pooled free energy from the walkers' scatter, at the pooled frames.

        Returns ``{"sem": kJ/mol, "frames": smallest fraction of frames compared}`` from
        :func:`aesample.estimators.walker_standard_error`, or None with a single walker.
        """
        from .estimators import walker_standard_error

        _check_estimator(estimator)
        if len(self.runs) < 2:
            return None
        st = self.state
        pts = self._points(estimator, lambdas, xis)
        sem, frac = walker_standard_error([r.free_energy(estimator) for r in self.runs], self.free_energy(estimator, st),
                                          pts, *self._grid(estimator, st), st.periodic)
        return {"sem": sem, "frames": frac}


ESTIMATORS = ("czar", "naive")


def _check_estimator(estimator: str) -> None:
    if not isinstance(estimator, str) or estimator not in ESTIMATORS:
        got = repr(estimator) if isinstance(estimator, str) else f"a {type(estimator).__name__}"
        raise ValueError(
            f"estimator must be one of {ESTIMATORS}, got {got} (frame values go by keyword: lambdas=, xis=)")


def load_result(out_dir) -> RunOutputs:
    """Read a run directory written by :func:`run_eabf` / :func:`run_md`."""
    out = Path(out_dir)
    try:
        run = json.loads((out / "run.json").read_text())
        ck = json.loads((out / "checkpoint.json").read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{out}: not a finished run directory ({exc.filename} missing)") from exc
    return RunOutputs(out, run, ck)
