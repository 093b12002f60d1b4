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
    "load_config",
    "config_from_dict",
    "apply_overrides",
    "dump_config",
    "save_config",
    "effective_config",
]


class ConfigError(ValueError):
    """A configuration value, key or file is invalid; the message names it."""


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

    timestep: float = Field(2.0, gt=0, le=10, description="Integration timestep, fs.")
    friction: float = Field(1.0, gt=0, description="Langevin friction coefficient, 1/ps.")
    minimize: bool = Field(True, description="Energy-minimise the starting structure before MD.")
    equilibration: float = Field(
        10.0, ge=0, description="Unbiased, unsampled equilibration before each run, ps."
    )
    report_interval: int = Field(100, gt=0, description="Steps between saved frames and COLVAR rows.")
    segment_steps: int = Field(
        25000, gt=0, description="Steps between checkpoints; a crash loses at most one segment."
    )
    seed: int = Field(2022, ge=0, description="Random seed for velocities and the Langevin thermostat.")
    cv_interval: int = Field(
        1, ge=1,
        description="Multiple time stepping: evaluate the CV/eABF force once every this many steps (1 = every "
        "step). Must divide report_interval and segment_steps; the outer step must stay below a tenth of the "
        "extended-variable period.",
    )

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
    dimension: int = Field(2, ge=1, le=3, description="Bottleneck size = number of CV components d.")
    hidden_layers: list[int] = Field(
        [40], min_length=1, description="Encoder hidden widths (the decoder mirrors them)."
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
    bins: int = Field(30, gt=0, description="Grid bins per CV dimension (30 over [-1.5, 1.5]: width 0.1).")
    kappa: float = Field(
        3000.0, gt=0,
        description="Coupling spring constant between CV and extended variable, kJ/mol/(CV unit)^2. Tight: "
        "coupling width sqrt(kT/kappa) ~ 0.03 at 300 K, a third of a bin, so that kappa exceeds the curvature of "
        "the free energy on the barriers the learned CV compresses (with 300 the alanine dipeptide loop crossed "
        "C7eq/C7ax about once per 2 ns and overestimated Delta F by 5-11 kJ/mol). Stiff: keep md.cv_interval 1 "
        "(the CV spring on the atoms has a ~16 fs period for alanine dipeptide). Each iteration caps it so that "
        "this period spans >= 8 (outer) time steps for its CV (logged; the value used is in metrics.json).",
    )
    extended_period: float = Field(
        0.2, gt=0, description="Oscillation period of the extended variable in its spring, ps (sets its mass)."
    )
    extended_temperature: Optional[float] = Field(
        None, gt=0, description="Temperature of the extended variable, K (default: the system's)."
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
        description="Samples a CZAR bin needs to give a gradient estimate; sparser fringe bins are left out of the "
        "free energy (their frames get weight 0). The count-weighted integration already gives sparse bins little "
        "say; a higher floor cuts more of the less-sampled basin's fringe and biases Delta F towards it, so raise it "
        "only when isolated noisy bins show up.",
    )
    full_samples: int = Field(100, gt=0, description="Samples in a bin for the full ABF bias (linear ramp).")
    min_samples: int = Field(50, ge=0, description="Samples in a bin below which no bias is applied.")
    wall_kappa: float = Field(
        30000.0, gt=0,
        description="Harmonic wall constant keeping the extended variable in the grid, kJ/mol/(CV unit)^2 "
        "(10 kappa; stiffer walls shorten the extended period and limit md.cv_interval).",
    )
    estimator: Literal["czar"] = Field(
        "czar",
        description="How frames are weighted back to the Boltzmann measure (training weights, Delta F, drift): "
        "'czar', w ~ exp(-beta A(xi)) / n(xi), the CZAR free energy of the CV over its biased histogram. The "
        "paper's 'naive' w ~ exp(-beta F_kappa(lambda)) was removed: on 12 walkers along a fixed learned CV its "
        "free-energy differences within a basin were 2-4x farther from the reference than CZAR's (RMS 2.3-3.1 vs "
        "0.7-1.4 kJ/mol), its Delta F 3-8 kJ/mol below CZAR's on every walker, and weighting over the lambda "
        "histogram actually sampled did no better (benchmarks/RESULTS.md, Estimators, 2026-12-06).",
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

    max_epochs: int = Field(300, gt=0, description="Upper bound on training epochs.")
    batch_size: int = Field(256, gt=0, description="Minibatch size, frames.")
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Adam L2 weight decay.")
    validation_fraction: float = Field(0.2, gt=0, lt=1, description="Fraction of frames held out for validation.")
    patience: int = Field(20, gt=0, description="Epochs without validation improvement before stopping early.")
    warm_start: bool = Field(True, description="Start iteration k's training from iteration k-1's weights.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Training device ('auto': CUDA if present).")
    seed: int = Field(0, ge=0, description="Seed for initialisation, splitting and shuffling.")


class LoopConfig(_Section):
    """The iterative eABF <-> retraining driver."""

    initial_md: float = Field(0.1, gt=0, description="Unbiased MD of iteration 0 (per starting structure), ns.")
    eabf_per_iteration: float = Field(0.1, gt=0, description="eABF simulation per iteration, ns (the paper used 10).")
    max_iterations: int = Field(4, ge=1, description="Maximum number of eABF iterations after iteration 0.")
    min_iterations: int = Field(
        2, ge=1, description="First eABF iteration that may declare convergence. Iteration 1 runs along a CV learned "
        "from unbiased MD, which only saw the starting basin: on alanine dipeptide its Delta F was 5-10 kJ/mol high "
        "in all four runs measured (either weighting), twice with R^2 >= 0.999 and a drift below 0.6 kJ/mol. Above max_iterations: the "
        "loop never declares convergence.",
    )
    convergence_threshold: float = Field(
        0.99, gt=0, le=1, description="Stop when the regression score R^2 of xi_k on xi_(k-1) reaches this."
    )
    free_energy_tolerance: Optional[float] = Field(
        1.0, gt=0, description="Also require the free-energy drift of the iteration's eABF run (RMS change of the "
        "eabf.estimator's free energy between half time and the end, where the frames are) to be at most this "
        "for convergence, kJ/mol "
        "(a CV that stopped changing does not make its free energy converged; a drift that stays above it asks "
        "for longer loop.eabf_per_iteration). With loop.walkers >= 2 the standard error of the pooled free energy "
        "from the walkers' scatter (same frames, same RMS) must be at most this too. null: the regression score "
        "alone decides.",
    )
    walkers: int = Field(
        1, ge=1, le=64, description="Independent eABF walkers per iteration (k >= 1), each running "
        "eabf_per_iteration ns with its own seed from the previous iteration's final structures in turn. Their "
        "accumulators are pooled for the free energy, the training weights and the drift; the spread of their own "
        "Delta F estimates is reported (metrics delta_f_phi_walkers, delta_f_phi_sem for dipeptides): one 1-2 ns "
        "alanine dipeptide walker scatters by 3-6 kJ/mol (SD, measured), which its two halves do not reveal.",
    )
    walker_processes: Optional[int] = Field(
        None, ge=1, description="Walkers run at once, each in its own process (null: all of them; 1: one after "
        "another in the driver's process). CPU-platform threads are divided among them.",
    )
    hidden_barrier_tolerance: Optional[float] = Field(
        0.02, ge=0, le=1,
        description="Largest share of the reweighted weight allowed in CV bins whose frames form separate, slowly "
        "exchanging sets in feature space (aesample.hiddenbarrier) for convergence; null: not checked.",
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


class Config(_Section):
    """A complete aesample run configuration."""

    system: SystemConfig = Field(default_factory=SystemConfig)
    md: MDConfig = Field(default_factory=MDConfig)
    cv: CVConfig = Field(default_factory=CVConfig)
    eabf: EABFConfig = Field(default_factory=EABFConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

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
# Error formatting: pydantic's messages reworded to name key, value and rule.

_SECTIONS = {name: field.annotation for name, field in Config.model_fields.items()}


def _allowed_keys(loc: tuple) -> str:
    if len(loc) == 1:
        return ", ".join(Config.model_fields)
    section = _SECTIONS.get(loc[0])
    return ", ".join(section.model_fields) if section else ""


def _format_error(err: dict) -> str:
    loc = tuple(p for p in err["loc"] if isinstance(p, str) or isinstance(p, int))
    key = ".".join(str(p) for p in loc)
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx", {})
    if kind == "extra_forbidden":
        where = loc[0] if len(loc) > 1 else "the top level"
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
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        _raise_validation(exc, source)
        raise  # unreachable; keeps type checkers happy


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
