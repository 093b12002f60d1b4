"""A loop run directory: its configuration, its progress record and where each iteration's files go.

This is what the loop's stages (:mod:`aesample.loopstages`), the report (:mod:`aesample.report`) and walker
processes need from a run; :class:`aesample.driver.LoopDriver` builds on it. It imports no other loop module, so
the loop's modules depend on it and not on each other in a circle.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from .config import Config, ConfigError, load_config
from .io import atomic_write_json

__all__ = ["RunLayout", "LoopState", "RunDirectoryError", "STAGES"]

STAGES = ("md", "train", "analyse")


class RunDirectoryError(ValueError):
    """The run directory is missing, not a run, or would be overwritten."""


@dataclass
class LoopState:
    """Progress of a run, persisted as ``state.json``."""

    iteration: int = 0
    stage: str = "md"
    finished: bool = False
    converged: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    version: int = 1

    @classmethod
    def load(cls, path: Path) -> "LoopState":
        """Read ``state.json``; raises :class:`RunDirectoryError` naming the file when it is unreadable."""
        try:
            data = json.loads(Path(path).read_text())
            state = cls(**data)
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            raise RunDirectoryError(f"{path}: unreadable run state: {exc}") from None
        if state.stage not in STAGES:
            raise RunDirectoryError(f"{path}: unknown stage {state.stage!r}")
        return state

    def save(self, path: Path) -> None:
        """Write ``state.json`` atomically."""
        atomic_write_json(path, asdict(self))


# Settings added with a new default after runs existed: (section, field, the behaviour such runs started with).
# A run.yaml written before the field resumes with what it started with, not with today's default.
_STARTED_WITHOUT = (("training", "sampling_weight", 0.0),)


def _as_started(config: Config, path: Path) -> Config:
    import yaml

    raw = yaml.safe_load(path.read_text()) or {}
    for section, name, value in _STARTED_WITHOUT:
        if name not in (raw.get(section) or {}):
            part = getattr(config, section).model_copy(update={name: value})
            config = config.model_copy(update={section: part})
    return config


class RunLayout:
    """A run directory with its validated configuration and the molecular system it describes.

    Parameters
    ----------
    run_dir
        The run directory (``run.yaml``, ``state.json``, ``iter_NNN/`` ...).
    config
        The run's effective configuration.
    system
        The built :class:`~aesample.systems.MolecularSystem`, if already at hand (else built on first use).
    """

    def __init__(self, run_dir: Path, config: Config, system: Any = None):
        self.run_dir = Path(run_dir)
        self.config = config
        self._system = system

    @staticmethod
    def read_config(run_dir: Path) -> Config:
        """``run_dir/run.yaml``; raises :class:`RunDirectoryError` when ``run_dir`` is not a run directory."""
        run_dir = Path(run_dir)
        if not (run_dir / "run.yaml").is_file() or not (run_dir / "state.json").is_file():
            raise RunDirectoryError(f"{run_dir} is not an aesample run directory (no run.yaml/state.json)")
        try:
            config = load_config(run_dir / "run.yaml")
        except ConfigError as exc:
            raise RunDirectoryError(str(exc)) from None
        return _as_started(config, run_dir / "run.yaml")

    @classmethod
    def open(cls, run_dir: Path) -> "RunLayout":
        """The layout of an existing run directory (what a walker process needs)."""
        return cls(run_dir, cls.read_config(run_dir))

    @property
    def system(self):
        """The parametrised :class:`~aesample.systems.MolecularSystem` (built lazily, once)."""
        if self._system is None:
            from .systems import system_from_config

            self._system = system_from_config(self.config.system)
        return self._system

    def iteration_dir(self, iteration: int) -> Path:
        """``RUN/iter_NNN``: every file of iteration ``iteration``."""
        return self.run_dir / f"iter_{iteration:03d}"

    def read_state(self) -> LoopState:
        """The progress record ``state.json`` as on disk."""
        return LoopState.load(self.run_dir / "state.json")

    def metrics(self, iteration: int) -> Optional[dict[str, Any]]:
        """``iter_NNN/metrics.json`` of an analysed iteration, or None."""
        path = self.iteration_dir(iteration) / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else None
