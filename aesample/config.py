"""The one validated configuration of an aesample run.

A run is described by a :class:`Config` with seven sections (``system``, ``md``,
``cv``, ``eabf``, ``training``, ``loop``, ``output``).  It is stored on disk as
YAML; every field carries its unit in its description and a default that works
for alanine dipeptide in vacuum.

Bad input raises :class:`ConfigError` whose message names the key (dotted path),
the bad value and what is allowed, e.g.::

    md.timestep: must be > 0 (got -1.0)
    unknown key 'md.timestp' (allowed keys in md: constraints, equilibration, ...)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "Config",
    "ConfigError",
    "SystemConfig",
    "MDConfig",
    "CVConfig",
    "EABFConfig",
    "TrainingConfig",
    "LoopConfig",
    "OutputConfig",
    "ExecutionConfig",
    "JobqueueConfig",
    "load_config",
    "config_from_dict",
    "apply_overrides",
    "dump_config",
    "save_config",
    "effective_config",
]


class ConfigError(ValueError):
    """A configuration value, key or file is invalid; the message names it."""


#: Unit conversions, applied once where the configuration meets the engine (OpenMM works in ps and steps).
PS_PER_FS = 1e-3
PS_PER_NS = 1e3


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SystemConfig(_Section):
    """What molecule is simulated and how it is parametrised."""

    name: str = Field(
        "alanine-dipeptide",
        description="Built-in system name (see `aesample systems`), or 'custom' with `pdb` set.",
    )
    pdb: Optional[Path] = Field(
        None, description="Custom PDB file; PDBFixer adds missing atoms and hydrogens. Implies name 'custom'."
    )
    forcefield: Optional[list[str]] = Field(
        None,
        description="OpenMM force-field XML files for a custom PDB (default ['amber14-all.xml']); "
        "built-in systems use their own.",
    )
    solvent: Optional[Literal["vacuum", "implicit", "explicit"]] = Field(
        None, description="Solvent for a custom PDB (default 'vacuum'); built-in systems fix their own."
    )
    implicit_model: Literal["gbn2", "gbn", "obc2", "obc1", "hct"] = Field(
        "gbn2", description="Implicit-solvent model (OpenMM 'implicit/<model>.xml') when solvent is 'implicit'."
    )
    water_model: Literal["tip3p", "tip3pfb", "spce", "tip4pew", "opc"] = Field(
        "tip3p", description="Water model (OpenMM 'amber14/<model>.xml') when solvent is 'explicit'."
    )
    padding: float = Field(1.0, gt=0, description="Minimum distance from the solute to each face of the cubic water box, nm.")
    ionic_strength: float = Field(
        0.0, ge=0, description="Salt concentration added on top of neutralising ions, mol/L (explicit solvent)."
    )
    ph: float = Field(7.0, ge=0, le=14, description="pH used by PDBFixer to protonate a custom PDB.")
    temperature: Optional[float] = Field(
        None, gt=0, description="Temperature, K. Default: the system's own (300 K alanine dipeptide, 340 K chignolin)."
    )
    nonbonded_cutoff: float = Field(1.0, gt=0, description="Real-space cutoff for periodic systems (PME), nm.")
    constraints: Literal["none", "HBonds", "AllBonds", "HAngles"] = Field(
        "HBonds", description="Bond constraints (OpenMM names)."
    )
    platform: Literal["auto", "Reference", "CPU", "CUDA", "OpenCL"] = Field(
        "auto",
        description="OpenMM platform. 'auto': CUDA > OpenCL > CPU, with Reference for tiny systems "
        "(< 100 atoms) where it is faster.",
    )
    precision: Literal["auto", "single", "mixed", "double"] = Field(
        "auto", description="GPU precision ('auto' = mixed). Ignored by Reference and CPU."
    )

    @field_validator("pdb")
    @classmethod
    def _pdb_exists(cls, value: Optional[Path]) -> Optional[Path]:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"file not found: {value}")
        return value


class MDConfig(_Section):
    """Molecular-dynamics integration and output cadence."""

    timestep: float = Field(
        2.0, gt=0, le=10, description="Integration timestep, fs. 2 with HBonds constraints; 1 without constraints.")
    friction: float = Field(1.0, gt=0, description="Langevin friction coefficient, 1/ps.")
    minimize: bool = Field(True, description="Energy-minimise the starting structure before MD.")
    equilibration: float = Field(
        10.0, ge=0, description="Equilibration before each run, ps: no ABF samples recorded (no bias builds up), no frames "
        "saved. A few ps let the velocities and the extended variable settle."
    )
    report_interval: int = Field(
        100, gt=0, description="Steps between saved frames and COLVAR rows, steps. The frames are the training "
        "data: aim for a few thousand per iteration (100 steps of 2 fs: 500 frames per 0.1 ns).",
    )
    segment_steps: int = Field(
        25000, gt=0, description="Steps between checkpoints, steps; a crash loses at most one segment. A multiple "
        "of report_interval; shorter segments cost a read-out of the accumulators each."
    )
    seed: int = Field(2022, ge=0, description="Random seed for velocities and the Langevin thermostat.")
    cv_interval: int = Field(
        1, ge=1,
        description="Multiple time stepping: evaluate the CV/eABF force once every this many steps (1 = every "
        "step), steps. Must divide report_interval and segment_steps; the outer step (cv_interval x timestep) must "
        "stay below a tenth of the extended system's shortest period and leave the CV spring >= 8 outer steps per "
        "period (else kappa is capped); 2 halves the CV cost where those allow it.",
    )

    @property
    def timestep_ps(self) -> float:
        """The integration timestep in ps (OpenMM's unit)."""
        return self.timestep * PS_PER_FS

    def steps(self, ps: float) -> int:
        """Number of (inner) steps covering ``ps`` picoseconds, rounded to the nearest."""
        return int(round(ps / self.timestep_ps))

    def ns(self, steps: int) -> float:
        """Simulated time of ``steps`` steps, ns."""
        return steps * self.timestep_ps / PS_PER_NS

    @model_validator(mode="after")
    def _segment_multiple(self) -> "MDConfig":
        for name in ("report_interval", "segment_steps"):
            if getattr(self, name) % self.cv_interval:
                raise ValueError(f"{name} ({getattr(self, name)}) must be a multiple of cv_interval ({self.cv_interval})")
        if self.segment_steps % self.report_interval:
            raise ValueError(
                f"segment_steps ({self.segment_steps}) must be a multiple of "
                f"report_interval ({self.report_interval})"
            )
        return self


class CVConfig(_Section):
    """The learned collective variable: inputs and autoencoder architecture."""

    selection: Optional[str] = Field(
        None,
        description="mdtraj selection of the input atoms. Default per system: alanine dipeptide "
        "'protein and not element H' (10 heavy atoms, 30 inputs), chignolin 'name CA' (10 atoms, 30 inputs); "
        "custom PDB: the peptide's heavy atoms for <= 4 protein residues, else 'name CA'.",
    )
    model: Literal["autoencoder", "vae"] = Field(
        "autoencoder", description="'autoencoder' (deterministic) or 'vae' (variational; CV = code mean)."
    )
    dimension: int = Field(
        2, ge=1, le=3, description="Bottleneck size = number of CV components d. The ABF grid has bins^d cells, so "
        "each added component multiplies the sampling needed; 2 for a dipeptide's two backbone dihedrals.",
    )
    hidden_layers: list[int] = Field(
        [40], min_length=1, description="Encoder hidden widths, neurons (the decoder mirrors them). The CV is "
        "evaluated every MD step: wider or deeper encoders cost MD speed; a few times the input count is typical.",
    )
    activation: Literal["tanh", "relu", "elu", "softplus", "silu"] = Field(
        "tanh", description="Hidden-layer activation."
    )
    standardize: bool = Field(
        False, description="Standardise aligned coordinates (mean/std stored in the model) before the encoder."
    )
    scale_range: tuple[float, float] = Field(
        (-1.0, 1.0), description="Each CV component is mapped onto this range on the training data (CV units)."
    )
    vae_beta: float = Field(1e-3, ge=0, description="KL weight of the variational autoencoder.")
    denoising_sigma: float = Field(0.0, ge=0, description="Gaussian input noise for a denoising AE, nm.")
    sparse_l1: float = Field(0.0, ge=0, description="L1 penalty on the code (sparse AE).")

    @field_validator("hidden_layers")
    @classmethod
    def _positive_widths(cls, value: list[int]) -> list[int]:
        bad = [w for w in value if w <= 0]
        if bad:
            raise ValueError(f"layer widths must be > 0 (got {bad[0]})")
        return value

    @field_validator("scale_range")
    @classmethod
    def _ordered_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] >= value[1]:
            raise ValueError(f"lower bound must be < upper bound (got {list(value)})")
        return value


class EABFConfig(_Section):
    """Extended-system adaptive biasing force along the learned CV (CV units: scaled, dimensionless)."""

    grid_min: float = Field(
        -1.5, description="Lower edge of the ABF grid in every CV dimension, CV units. The training data span "
        "cv.scale_range; the margin beyond it lets eABF push the system past the states it was trained on.",
    )
    grid_max: float = Field(1.5, description="Upper edge of the ABF grid in every CV dimension, CV units.")
    bins: int = Field(
        30, gt=0, description="ABF grid bins per CV dimension (30 over [-1.5, 1.5]: width 0.1, CV units). Coarse "
        "bins fill fast; the free energy has its own finer grid (czar_bins).",
    )
    kappa: float = Field(
        3000.0, gt=0,
        description="Coupling spring constant between CV and extended variable, kJ/mol/(CV unit)^2. The coupling "
        "width sqrt(kT/kappa) (0.03 at 300 K with the default) should be below the ABF bin width and kappa above "
        "the curvature of the free energy on the barriers: raise it when Delta F depends on it, lower it when the "
        "cap below binds. Each iteration caps it so that the CV spring's period on the atoms spans >= 8 (outer) "
        "time steps for its CV (logged; the value used is in metrics.json). Measurements: "
        "benchmarks/LOOP_RESULTS.md.",
    )
    extended_period: float = Field(
        0.2, gt=0, description="Oscillation period of the extended variable in its spring, ps (sets its mass "
        "kappa (period / 2 pi)^2). Longer: lambda moves slower and the outer MTS step may be longer; it must stay "
        "well above the timestep.",
    )
    czar_bins: Optional[int] = Field(
        None, gt=0,
        description="Bins per CV dimension of the CZAR grid on xi (same range as the ABF grid), where the free "
        "energy and the reweighting weights are estimated. null: the ABF bins times ceil(ABF bin width / coupling "
        "width sqrt(kT/kappa)), i.e. CZAR bins no wider than the coupling width (120 with the defaults: width "
        "0.025). Finer bins resolve more and need more samples per bin.",
    )
    czar_min_count: int = Field(
        1, ge=1,
        description="Samples a CZAR bin needs to take part in the free energy; sparser fringe bins are left out "
        "(their frames get weight 0). The count-weighted integration already gives sparse bins little "
        "say; a higher floor cuts more of the less-sampled basin's fringe and biases Delta F towards it, so raise it "
        "only when isolated noisy bins show up.",
    )
    full_samples: int = Field(
        100, gt=0, description="Samples in an ABF bin for the full bias (linear ramp from min_samples), samples. "
        "Larger: a less noisy bias early on, slower to push out of a basin.",
    )
    min_samples: int = Field(
        50, ge=0, description="Samples in an ABF bin below which no bias is applied, samples (< full_samples)."
    )
    cuda_graphs: Literal["auto", "on", "off"] = Field(
        "auto", description="Capture the eABF force in a CUDA graph (openmm-torch's useCUDAGraphs; CUDA platform "
        "only; it removes per-op launch costs). auto: on CUDA when the CV has no op that waits for the host "
        "(aesample.torchbinding.host_synchronisations; the default eigh rotation of learned CVs has one); on: "
        "always ask (the run fails if the capture fails); off: never.",
    )
    cpu_kernel: Literal["auto", "on", "off"] = Field(
        "auto", description="Compute each eABF step on the CPU and Reference platforms with one compiled op "
        "(aesample.cpukernel, built with the machine's C++ compiler on first use) instead of the TorchScript "
        "step, whose few hundred tiny ops cost far more than their arithmetic. Same results (equal to ~1e-12). "
        "auto: where the CV allows it (the loop's learned CVs without a periodic box) and it builds, else the "
        "TorchScript step; on: required (the run fails where it cannot be used); off: never.",
    )
    close_periodic_bias: bool = Field(
        True,
        description="Along a periodic CV component (a torsion), apply the ABF gradient minus its mean around the "
        "ring of grid bins once every bin of the ring was visited, so the bias cannot drive lambda round the ring "
        "(a raw estimate's nonzero circulation does, which biases the mean force it then measures). Changes the "
        "applied bias only, not the estimators; no effect on non-periodic CVs. Keep true; false reproduces plain "
        "ABF.",
    )
    bias_only_where_reached: bool = Field(
        True,
        description="Apply the ABF bias in a lambda bin only once the CV xi has been sampled there. Beyond the "
        "range a bounded CV can reach (the autoencoder's tanh layers bound it), the mean force on lambda is only "
        "the spring pulling it back to xi; cancelling it lets lambda run off until the spring tears the molecule "
        "apart. Changes the applied bias only, not the estimators; no effect on periodic CVs. Keep true; false "
        "reproduces plain eABF.",
    )
    smooth_bias: bool = Field(
        True,
        description="Apply the ABF bias as the gradient of a potential: the least-squares integral of the per-bin "
        "mean forces on the ABF grid, refreshed every smooth_bias_interval samples inside the force, interpolated "
        "multilinearly between bin centres and continued one bin beyond the sampled region with the last sampled "
        "bin's slope (further out, the binned bias until the next refresh). In 2D and 3D a bias constant over each "
        "bin is not a gradient and can distort the CZAR free energy along a learned CV; this one is exactly "
        "conservative. Changes the applied "
        "bias only, not the estimators. Captured in a CUDA graph (eabf.cuda_graphs), the refresh cannot branch: the "
        "samples between two refreshes solve for the next potential, which then lags one interval. false reproduces plain eABF (binned bias).",
    )
    smooth_bias_interval: int = Field(
        500, ge=1,
        description="Samples between refreshes of the smooth bias's potential, samples. Each refresh solves a "
        "linear system over the ABF grid inside the force: fewer refreshes cost less, more let the bias follow the "
        "estimate more closely. A resumed run keeps the interval it started with.",
    )
    wall_kappa: float = Field(
        30000.0, gt=0,
        description="Harmonic wall constant keeping the extended variable in the grid, kJ/mol/(CV unit)^2 "
        "(10 kappa; stiffer walls shorten the extended period and limit md.cv_interval).",
    )
    estimator: Literal["czar"] = Field(
        "czar",
        description="How frames are weighted back to the Boltzmann measure (training weights, Delta F, drift): "
        "'czar', w ~ exp(-beta A(xi)) / n(xi), the CZAR free energy of the CV over its biased histogram (the only "
        "choice: the paper's exp(-beta F_kappa(lambda)) weights were measured worse and removed, see "
        "benchmarks/RESULTS.md, Estimators).",
    )

    @field_validator("estimator", mode="before")
    @classmethod
    def _naive_removed(cls, value):
        if value == "naive":
            raise ValueError("'naive' (w ~ exp(-beta F_kappa(lambda))) was removed: its free-energy differences "
                             "were 2-4x farther from the reference than CZAR's (benchmarks/RESULTS.md, "
                             "Estimators); use 'czar' or delete the line")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "EABFConfig":
        if self.grid_min >= self.grid_max:
            raise ValueError(f"grid_min ({self.grid_min}) must be < grid_max ({self.grid_max})")
        if self.min_samples >= self.full_samples:
            raise ValueError(
                f"min_samples ({self.min_samples}) must be < full_samples ({self.full_samples})"
            )
        return self


class TrainingConfig(_Section):
    """Weighted autoencoder training."""

    max_epochs: int = Field(
        300, gt=0, description="Upper bound on training epochs; early stopping (patience) usually ends training first."
    )
    batch_size: int = Field(256, gt=0, description="Minibatch size, frames.")
    learning_rate: float = Field(
        1e-3, gt=0, description="Adam learning rate. Lower it when the validation loss oscillates."
    )
    weight_decay: float = Field(0.0, ge=0, description="Adam L2 weight decay.")
    validation_fraction: float = Field(0.2, gt=0, lt=1, description="Fraction of frames held out for validation.")
    patience: int = Field(
        20, gt=0, description="Epochs without validation improvement before stopping early, epochs."
    )
    warm_start: bool = Field(True, description="Start iteration k's training from iteration k-1's weights.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Training device ('auto': CUDA if present).")
    seed: int = Field(0, ge=0, description="Seed for initialisation, splitting and shuffling.")
    sampling_weight: float = Field(
        0.5, ge=0, le=1, description="Share of the training weight spread evenly over the iteration's frames, the "
        "rest following the reweighting weights (eabf.estimator): training weight = (1 - s) w + s / n, a fraction. "
        "Reweighting alone (0, the paper's choice) gives the frames at the barrier and along the transition almost "
        "no weight, so the autoencoder may map them next to the other side's basin: a hidden barrier that the next "
        "iteration's walkers cross only by chance (loop.hidden_barrier_tolerance). 0.5 keeps half of the weight "
        "Boltzmann; 1 trains on the biased sample as it is. Lower it if the CV should describe the basins alone.",
    )


class LoopConfig(_Section):
    """The iterative eABF <-> retraining driver."""

    initial_md: float = Field(
        0.1, gt=0, description="Unbiased MD of iteration 0 (per starting structure), ns: long enough to sample the "
        "starting basin (alanine dipeptide: ~1 ns).",
    )
    eabf_per_iteration: float = Field(
        0.1, gt=0, description="eABF simulation per iteration and walker, ns (the paper used 10). Raise it while the "
        "free-energy drift or error stays above loop.free_energy_tolerance.",
    )
    max_iterations: int = Field(
        4, ge=1, description="Maximum number of eABF iterations after iteration 0 (the loop stops there, converged "
        "or not; `aesample resume RUN --max-iterations N` goes on).",
    )
    min_iterations: int = Field(
        2, ge=1, description="First eABF iteration that may declare convergence. Iteration 1 runs along a CV learned "
        "from unbiased MD, which has seen only the starting basin, so keep it >= 2 (benchmarks/LOOP_RESULTS.md). "
        "Above max_iterations: the loop never declares convergence.",
    )
    convergence_threshold: float = Field(
        0.99, gt=0, le=1, description="Stop when the regression score R^2 of xi_k on xi_(k-1) reaches this "
        "(dimensionless, <= 1). It says the CV stopped changing; the free-energy conditions below say whether the "
        "free energy along it settled.",
    )
    free_energy_tolerance: Optional[float] = Field(
        1.0, gt=0, description="Also require the free-energy drift of the iteration's eABF run (RMS change of the "
        "eabf.estimator's free energy between half time and the end, where the frames are) to be at most this "
        "for convergence, kJ/mol "
        "(a CV that stopped changing does not make its free energy converged; a drift that stays above it asks "
        "for longer loop.eabf_per_iteration). With loop.walkers >= 2 the standard error of the pooled free energy "
        "from the walkers' scatter (same frames, same RMS) must be at most this too, and so must the named "
        "basins' Delta F error bar where the system names basins (at least the walkers' standard error, the "
        "gap between the pooled value and the walkers' mean, and half the difference between the Delta F of the "
        "first and of the second half of the samples). null: the regression score "
        "and the sampling checks decide.",
    )
    walkers: int = Field(
        1, ge=1, le=64, description="Independent eABF walkers per iteration (k >= 1), each running "
        "eabf_per_iteration ns with its own seed from the previous iteration's final structures in turn. Their "
        "accumulators are pooled for the free energy, the training weights and the drift; the spread of their own "
        "Delta F estimates is reported (metrics basin_delta_f_walkers, basin_delta_f_sem, "
        "basin_delta_f_walkers_gap for dipeptides) and bounds the named basins' Delta F error bar from below. "
        "Use >= 2 when the free energy must come with an error bar: one walker's own error estimates understate "
        "the scatter between walkers.",
    )
    walker_processes: Optional[int] = Field(
        None, ge=1, description="Walkers run at once, each in its own Dask worker process (null: all of them; 1: "
        "one after another in the driver's process, no Dask). The workers come from the execution section: an "
        "embedded local cluster (default), a running scheduler or a batch-queue cluster. CPU-platform threads "
        "(execution.threads) are divided among the walkers at once.",
    )
    share_bias: bool = Field(
        False, description="Shared-bias multiple walkers (with walkers >= 2): every walker writes its own lambda-grid "
        "accumulators every loop.share_interval steps (at a checkpoint) and applies its own "
        "plus the other walkers' latest ones as its bias in the next segment, so the bias fills about walkers "
        "times faster (Colvars' shared ABF). Run the walkers at once (walker_processes null or = walkers): one "
        "after another, a walker sees only the finished walkers before it. The free energy, weights and errors "
        "still pool the walkers' own accumulators at the end of the iteration.",
    )
    share_interval: Optional[int] = Field(
        None, gt=0, description="With share_bias: steps between two exchanges of the walkers' accumulators, steps "
        "(null: md.segment_steps). Shared walkers checkpoint at every exchange (their segments are "
        "min(md.segment_steps, share_interval) long). A multiple of md.report_interval (and so of md.cv_interval). "
        "Each exchange rebuilds the walker's force and Context (a fraction of a second on CPU for small systems, "
        "more on GPUs) and writes a checkpoint: choose it so that the MD between exchanges takes much longer than "
        "that, and short against the time the bias needs to fill a bin. Ignored without share_bias.",
    )
    hidden_barrier_tolerance: Optional[float] = Field(
        0.02, ge=0, le=1,
        description="Largest share allowed in CV bins whose frames form separate, slowly exchanging sets in feature "
        "space (aesample.hiddenbarrier) for convergence, checked twice: as a share of the reweighted weight and as "
        "a share of the iteration's frames (where a CV squeezes a barrier, the mixed bins carry little weight but "
        "decide the free energy across it). A fraction; null: not checked.",
    )
    min_split_crossings: Optional[float] = Field(
        4.0, ge=0, description="Fewest crossings per walker, on average, between the two sets of CV bins that the "
        "slowest process of the walkers' moves between bins separates (aesample.slowsplit), for convergence, when "
        "each set holds at least 5 % of the frames. Fewer crossings mean a barrier between neighbouring bins that "
        "the bias along the CV does not lower (or too little sampling): the free energy between the two sets "
        "rests on those few passages. Crossings per walker; null: not checked.",
    )
    min_ess: Optional[float] = Field(
        30.0, ge=0, description="Smallest Kish effective sample size of an iteration's reweighted frames for "
        "convergence, frames (the autoencoder learns from about that many frames; with fewer, an R^2 near 1 says "
        "nothing). Raise it with longer iterations; null: not checked.",
    )
    max_support_growth: Optional[float] = Field(
        0.05, ge=0, le=1, description="Largest share of an iteration's reweighted weight allowed in CV bins that "
        "the walkers first reached in the second half of their runs, for convergence (0-1): above it the run was "
        "still discovering states (e.g. a basin entered only near the end). null: not checked.",
    )
    basin_min_transitions: int = Field(
        4, ge=0, description="Committed transitions between two named basins a run needs before their Delta F is "
        "reported (dipeptides: C7ax, 0 < phi < 2.3 rad, against the rest); fewer: 'not sampled'.",
    )
    basin_min_ess: float = Field(
        10.0, ge=0, description="Kish effective number of reweighted frames each named basin needs before its "
        "Delta F is reported.",
    )
    pool_iterations: bool = Field(False, description="Train on the reweighted frames of all iterations so far.")
    initial_structures: list[Path] = Field(
        [], description="Extra PDB structures (same topology) to start iteration-0 MD from (semi-supervised start)."
    )

    @field_validator("initial_structures")
    @classmethod
    def _structures_exist(cls, value: list[Path]) -> list[Path]:
        for path in value:
            if not Path(path).is_file():
                raise ValueError(f"file not found: {path}")
        return value


class OutputConfig(_Section):
    """Where and what to write."""

    directory: Path = Field(Path("aesample_run"), description="Run directory (never overwritten silently).")
    trajectory_format: Literal["dcd", "xtc"] = Field("dcd", description="Trajectory file format.")
    plots: bool = Field(True, description="Write PNG plots and the report.")


class JobqueueConfig(_Section):
    """A batch-queue cluster for the walkers (dask-jobqueue; install ``aesample[cluster]``): each batch job runs
    ``walkers_per_job`` Dask workers, one walker each, and the driver submits enough jobs for the walkers that run
    at once. The run directory must be on a file system the jobs share with the driver."""

    kind: Literal["slurm", "pbs", "lsf"] = Field(
        ..., description="Batch system: slurm, pbs or lsf (dask-jobqueue's SLURMCluster, PBSCluster, LSFCluster).")
    cores: int = Field(..., ge=1, description="CPU cores per job; the job's walkers share them (OpenMM CPU threads).")
    memory: str = Field(..., min_length=1, description="Memory per job, with unit, e.g. '16GB' (the walkers of a "
                        "job share it; an alanine-dipeptide walker needs < 2 GB).")
    gpus_per_job: int = Field(
        0, ge=0, description="GPUs per job (0: CPU jobs). Requested with the batch system's own directive (slurm "
        "--gres=gpu:N, pbs ngpus=N, lsf -gpu num=N); each walker of the job uses one of them as its OpenMM CUDA "
        "DeviceIndex (worker i of a job: GPU i modulo the GPUs the job sees).",
    )
    walkers_per_job: Optional[int] = Field(
        None, ge=1, description="Dask workers (= walkers at once) per job; null: gpus_per_job, at least 1 (one "
        "walker per GPU).",
    )
    jobs: Optional[int] = Field(
        None, ge=1, description="Jobs to submit; null: enough for the walkers that run at once "
        "(ceil(walker slots / walkers_per_job)).",
    )
    walltime: Optional[str] = Field(
        None, description="Wall-clock limit per job, the batch system's format (slurm/pbs 'HH:MM:SS', lsf 'HH:MM'); "
        "null: the queue's default. A walker cut off by it resumes from its last checkpoint in another job.",
    )
    queue: Optional[str] = Field(None, description="Queue/partition to submit to; null: the batch system's default.")
    account: Optional[str] = Field(None, description="Account/project charged; null: the user's default.")
    job_extra_directives: list[str] = Field(
        [], description="Extra scheduler directives, one per item, without the prefix (e.g. '--constraint=a100' "
        "for slurm).",
    )
    job_script_prologue: list[str] = Field(
        [], description="Shell lines run in the job before the worker starts (e.g. 'module load cuda', "
        "'source ~/venv/bin/activate').",
    )
    python: Optional[str] = Field(None, description="Python executable on the compute nodes; null: the driver's "
                                  "(sys.executable).")
    interface: Optional[str] = Field(None, description="Network interface the workers listen on (e.g. 'ib0'); null: "
                                     "dask-jobqueue's default.")
    local_directory: Optional[str] = Field(None, description="Node-local scratch folder for Dask's own files; null: "
                                           "Dask's default.")

    @property
    def workers_per_job(self) -> int:
        """Dask workers (walkers at once) per job: ``walkers_per_job`` or ``max(1, gpus_per_job)``."""
        return self.walkers_per_job or max(1, self.gpus_per_job)


class ExecutionConfig(_Section):
    """How the run uses the machine's cores, and where the walkers run (a local Dask cluster by default)."""

    threads: Optional[int] = Field(
        None, ge=1, description="CPU cores the whole run may use, shared by the walkers running at once: each MD "
        "process gives OpenMM's CPU platform threads // (walkers at once) threads, and torch one intra-op and "
        "one inter-op thread (the CV is too small to gain from more; extra torch threads spin and slow MD "
        "down whenever anything else runs on the machine). null: every core this process may run on (its CPU "
        "affinity). Set it below the core count to leave cores to other jobs on a shared machine.",
    )
    scheduler: Optional[str] = Field(
        None, description="Address of a running Dask scheduler for the walkers, e.g. 'tcp://host:8786' (its workers "
        "must see the run directory at the same path and have aesample installed; their thread counts are their "
        "own). null: the driver starts its own cluster (a local one, or the jobqueue one).",
    )
    jobqueue: Optional[JobqueueConfig] = Field(
        None, description="Run the walkers in batch jobs (see JobqueueConfig: kind, cores, memory, gpus_per_job, "
        "walltime, queue, account, ...); null: a local cluster on this machine. Not together with scheduler.",
    )
    retries: int = Field(
        3, ge=0, description="Times a walker task is started again after it failed or its worker was lost (killed, "
        "pre-empted, out of walltime); each restart resumes the walker from its last checkpoint, losing at most one "
        "segment. For a cluster given by scheduler, how often the scheduler itself retries a lost worker's task "
        "is its own setting (distributed.scheduler.allowed-failures).",
    )

    @field_validator("scheduler")
    @classmethod
    def _scheduler_address(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and "://" not in value:
            raise ValueError(f"expected a scheduler address such as 'tcp://host:8786', got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_cluster(self) -> "ExecutionConfig":
        if self.scheduler is not None and self.jobqueue is not None:
            raise ValueError("give either scheduler (a running cluster) or jobqueue (batch jobs started by the "
                             "driver), not both")
        return self


class Config(_Section):
    """A complete aesample run configuration."""

    system: SystemConfig = Field(default_factory=SystemConfig)
    md: MDConfig = Field(default_factory=MDConfig)
    cv: CVConfig = Field(default_factory=CVConfig)
    eabf: EABFConfig = Field(default_factory=EABFConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)

    @model_validator(mode="after")
    def _share_interval_fits_md(self) -> "Config":
        interval, report = self.loop.share_interval, self.md.report_interval
        if interval is not None and interval % report:
            raise ValueError(f"loop.share_interval ({interval}) must be a multiple of md.report_interval ({report}) "
                             f"(steps; md.cv_interval {self.md.cv_interval} divides that)")
        return self

    @model_validator(mode="after")
    def _known_system(self) -> "Config":
        from .systems import SYSTEMS  # local import: systems imports heavy OpenMM modules

        name = self.system.name
        if self.system.pdb is not None:
            if name not in ("custom", "alanine-dipeptide"):
                raise ValueError(f"system.name: give either a built-in name or a pdb, not both (got name '{name}')")
            object.__setattr__(self.system, "name", "custom")
        elif name not in SYSTEMS:
            raise ValueError(
                f"system.name: unknown system '{name}' (available: {', '.join(SYSTEMS)}, or set system.pdb)"
            )
        return self


# ---------------------------------------------------------------------------
# `aesample eabf` along standard CVs (angles in rad, distances in nm): the grid defaults there depend on the CV.

#: ABF bins per component: an angle of a 1D CV, an angle of a 2D/3D CV, any other component.
STANDARD_CV_BINS = {"angle_1d": 72, "angle": 36, "other": 50}
#: Samples per bin for the full bias: 1D, 2D/3D.
STANDARD_CV_FULL_SAMPLES = {"1d": 500, "nd": 100}


def standard_cv_defaults(periodic: list[bool], grid_min: list[float], grid_max: list[float], temperature: float,
                         bins: Optional[list[int]] = None) -> dict[str, Any]:
    """Grid defaults of ``aesample eabf`` along standard CVs, per component (kappa in kJ/mol/unit^2).

    bins (unless given): :data:`STANDARD_CV_BINS` (2D angles: 36 x 36 with the full bias at 100 samples fill in
    ~2 ns); kappa: kT / (bin width)^2, a coupling width of one bin; full_samples: :data:`STANDARD_CV_FULL_SAMPLES`.
    The learned CVs of the loop use the ``eabf`` section instead (CV units on a fixed grid).
    """
    from .estimators import kT

    d = len(periodic)
    if bins is None:
        bins = [(STANDARD_CV_BINS["angle_1d"] if d == 1 else STANDARD_CV_BINS["angle"]) if p else
                STANDARD_CV_BINS["other"] for p in periodic]
    width = [(b - a) / n for a, b, n in zip(grid_min, grid_max, bins)]
    return {"bins": bins, "kappa": [kT(temperature) / w ** 2 for w in width],
            "full_samples": STANDARD_CV_FULL_SAMPLES["1d" if d == 1 else "nd"]}


# ---------------------------------------------------------------------------
# Error formatting: pydantic's messages reworded to name key, value and rule.

_SECTIONS = {name: field.annotation for name, field in Config.model_fields.items()}


def _allowed_keys(loc: tuple) -> str:
    model: Any = Config
    for part in loc[:-1]:  # down to the section or sub-section (e.g. execution.jobqueue) holding the key
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return ""
        model = next((a for a in (field.annotation, *getattr(field.annotation, "__args__", ()))
                      if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return ""
    return ", ".join(model.model_fields)


def _format_error(err: dict) -> str:
    loc = tuple(p for p in err["loc"] if isinstance(p, str) or isinstance(p, int))
    key = ".".join(str(p) for p in loc)
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx", {})
    if kind == "extra_forbidden":
        where = ".".join(str(p) for p in loc[:-1]) if len(loc) > 1 else "the top level"
        return f"unknown key '{key}' (allowed keys in {where}: {_allowed_keys(loc)})"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()))
        return f"{key}: must be {op} {bound} (got {value!r})"
    if kind == "literal_error":
        return f"{key}: invalid value {value!r} (allowed: {ctx.get('expected')})"
    if kind in ("float_parsing", "float_type", "int_parsing", "int_type", "int_from_float", "bool_parsing",
                "bool_type", "string_type", "list_type", "tuple_type", "path_type", "model_type", "dict_type"):
        expected = {
            "float": "a number", "int": "an integer", "bool": "true or false", "string": "a string",
            "list": "a list", "tuple": "a list of two numbers", "path": "a file path", "model": "a mapping",
            "dict": "a mapping",
        }[kind.split("_")[0]]
        return f"{key}: expected {expected}, got {value!r} ({type(value).__name__})"
    if kind == "missing":
        return f"{key}: required key is missing"
    message = err["msg"].removeprefix("Value error, ")
    if message.startswith("system.name:"):
        return message
    return f"{key}: {message}" if key else message


def _raise_validation(exc: ValidationError, source: str | None) -> None:
    lines = [_format_error(e) for e in exc.errors(include_url=False)]
    prefix = f"{source}: " if source else ""
    raise ConfigError(prefix + "; ".join(lines)) from None


def config_from_dict(data: dict[str, Any] | None, source: str | None = None) -> Config:
    """Validate a nested mapping into a :class:`Config`.

    Parameters
    ----------
    data
        Mapping with (a subset of) the sections; missing keys take defaults.
    source
        Name of the file the data came from, prefixed to error messages.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source or 'config'}: expected a mapping of sections, got {type(data).__name__}")
    data = _without_retired_keys(data, source)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        _raise_validation(exc, source)
        raise  # unreachable; keeps type checkers happy


def _without_retired_keys(data: dict[str, Any], source: str | None) -> dict[str, Any]:
    """Drop keys that older versions wrote with their only allowed value (``eabf.extended_temperature: null``: the
    extended variable always runs at ``system.temperature``), so that their run.yaml files still load; any other
    value is refused, naming the key."""
    eabf = data.get("eabf")
    if isinstance(eabf, dict) and "extended_temperature" in eabf:
        if eabf["extended_temperature"] is not None:
            prefix = f"{source}: " if source else ""
            raise ConfigError(f"{prefix}eabf.extended_temperature: no longer supported (got "
                              f"{eabf['extended_temperature']!r}); the extended variable runs at system.temperature")
        data = dict(data, eabf={k: v for k, v in eabf.items() if k != "extended_temperature"})
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load and validate a YAML configuration file, then apply ``key=value`` overrides.

    Raises
    ------
    ConfigError
        If the file is missing, is not valid YAML, or holds invalid values.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {_yaml_problem(exc)}") from None
    data = _with_overrides(data or {}, overrides or [])
    return config_from_dict(data, source=str(path))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: the problem and where (line:column, 1-based)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + problem + (f" ({context})" if context else "")


def _with_overrides(data: dict, overrides: list[str]) -> dict:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. md.timestep=1.0")
        section, name = parts
        target = data.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"--set {item!r}: '{section}' is not a section")
        target[name] = yaml.safe_load(raw) if raw.strip() else None
    return data


def apply_overrides(config: Config, overrides: list[str], source: str = "command line") -> Config:
    """Return a new validated config with ``section.key=value`` overrides (values parsed as YAML)."""
    data = _with_overrides(config_to_dict(config), overrides)
    return config_from_dict(data, source=source)


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict (paths as strings, tuples as lists) that validates back to ``config``."""
    return config.model_dump(mode="json")


def dump_config(config: Config) -> str:
    """YAML text of the effective configuration, with each field's description as a comment."""
    lines = ["# aesample configuration (units in comments)"]
    data = config_to_dict(config)
    for section, model in _SECTIONS.items():
        lines.append(f"{section}:")
        for name, field in model.model_fields.items():
            value = yaml.safe_dump({name: data[section][name]}, default_flow_style=True, width=10**6).strip()
            value = value[1:-1] if value.startswith("{") else value
            lines.append(f"  # {field.description}")
            lines.append(f"  {value}")
    return "\n".join(lines) + "\n"


def save_config(config: Config, path: str | Path) -> None:
    """Write ``dump_config(config)`` atomically to ``path``."""
    from .io import atomic_write_text

    atomic_write_text(path, dump_config(config))


def effective_config(config: Config) -> Config:
    """Fill the system-dependent defaults (temperature, CV selection) from the system's recipe.

    The result is what a run actually uses; dumping and loading it gives the same config.
    """
    from .systems import SYSTEMS

    spec = SYSTEMS.get(config.system.name)
    temperature = config.system.temperature or (spec.temperature if spec else 300.0)
    # A custom system's default depends on its topology: the driver fills it once the system is built.
    selection = config.cv.selection or (spec.selection if spec else None)
    data = config_to_dict(config)
    data["system"]["temperature"] = temperature
    data["cv"]["selection"] = selection
    return config_from_dict(data)
