"""The iterative loop: MD -> reweighted autoencoder training -> new CV -> eABF along it -> ...

Method of Belkacemi, Gkeka, Lelievre & Stoltz, JCTC 18 (2022):

* iteration 0: unbiased MD from one or several structures, then train the first autoencoder;
* iteration k >= 1: eABF along xi_{k-1} (``loop.walkers`` independent walkers, pooled); frames reweighted to
  the Boltzmann measure (``eabf.estimator``: CZAR w ∝ exp(-beta A(xi)) / n(xi), or the paper's
  w ∝ exp(-beta F_kappa(lambda))); retrain (warm start) -> xi_k;
* convergence: R^2 of the linear regression of xi_k on xi_{k-1} over iteration k's frames.

Run directory (one concept per file, all written atomically)::

    RUN/run.yaml            effective configuration
    RUN/state.json          progress: iteration, stage (md | train | analyse), history
    RUN/aesample.log        log
    RUN/aesample.lock       PID, host and command of the process running the loop (aesample.runlock)
    RUN/iter_NNN/md_J/      MD segments, checkpoints, COLVAR, eABF grids (aesample.md), one per start/walker
    RUN/iter_NNN/trajectory.dcd, topology.pdb   the iteration's frames, runs joined in order, and their topology
    RUN/iter_NNN/cv.pt      TorchScript CV (+ cv.json), model.pt, weights.npy, loss.*, metrics.json, *.png
    RUN/summary.json, RUN/report.md, RUN/report.html

Every stage is idempotent given its inputs (fixed seeds), and ``state.json`` only moves
forward after a stage's outputs are on disk, so ``aesample resume RUN`` continues after a
kill at any moment; inside MD stages at most one segment is lost.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional


from .config import Config, save_config
from .io import atomic_write_json
from .runlayout import STAGES, LoopState, RunDirectoryError, RunLayout

__all__ = ["LoopDriver", "LoopState", "RunDirectoryError", "STAGES"]

log = logging.getLogger("aesample")


class LoopDriver(RunLayout):
    """Runs (or resumes) the eABF <-> retraining loop in a run directory.

    Use :meth:`create` for a new run and :meth:`open` to resume one; then :meth:`run`. The stages get the run's
    layout (:class:`~aesample.runlayout.RunLayout`: directory, configuration, system), which this class extends
    with the progress record, the log and the lock.
    """

    def __init__(self, run_dir: Path, config: Config, state: LoopState):
        super().__init__(run_dir, config)
        self.state = state
        self._setup_logging()

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, config: Config, run_dir: Optional[Path] = None) -> "LoopDriver":
        """Start a new run in ``run_dir`` (default ``config.output.directory``).

        Raises
        ------
        RunDirectoryError
            If the directory exists and is not empty (runs are never overwritten silently).
        """
        run_dir = Path(run_dir or config.output.directory)
        if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise RunDirectoryError(
                f"run directory {run_dir} already exists and is not empty: "
                f"continue it with `aesample resume {run_dir}` or choose another --out"
            )
        from .config import config_from_dict
        from .systems import system_from_config

        # Built before anything is written: a bad PDB leaves no half-made run directory behind.
        system = system_from_config(config.system)
        data = config.model_dump(mode="json")
        data["output"]["directory"] = str(run_dir)
        if data["cv"]["selection"] is None:  # custom system: its default depends on the topology
            data["cv"]["selection"] = system.selection
        config = config_from_dict(data)
        from .loopstages import preflight

        preflight(config, system)  # selection, structures, settings: errors now, not after iteration 0's MD
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "run.yaml")
        state = LoopState()
        state.save(run_dir / "state.json")
        driver = cls(run_dir, config, state)
        driver._system = system
        driver._preflight_done = True
        return driver

    @classmethod
    def open(cls, run_dir: Path) -> "LoopDriver":
        """Re-open an existing run directory (for resume, status, report)."""
        run_dir = Path(run_dir)
        return cls(run_dir, cls.read_config(run_dir), LoopState.load(run_dir / "state.json"))

    def extend(self, max_iterations: int) -> None:
        """Raise ``loop.max_iterations`` of this run to ``max_iterations`` so that it continues.

        A run that stopped at its iteration limit without converging is reopened at the next iteration's MD
        stage; an unfinished run only gets the new limit. ``run.yaml`` is rewritten before ``state.json`` (both
        atomically), so an interruption in between leaves a finished run that the same call extends again.

        Raises
        ------
        RunDirectoryError
            If the run converged, or ``max_iterations`` is not above the last iteration done.
        """
        from .config import config_from_dict, save_config

        done = max((h["iteration"] for h in self.state.history), default=-1)
        if self.state.converged:
            raise RunDirectoryError(f"{self.run_dir}: converged at iteration {done}; start a new run to go on")
        if max_iterations <= max(done, 0) or max_iterations < self.config.loop.max_iterations:
            raise RunDirectoryError(
                f"{self.run_dir}: --max-iterations {max_iterations} must be above the last iteration done ({done}) "
                f"and not below loop.max_iterations ({self.config.loop.max_iterations})")
        data = self.config.model_dump(mode="json")
        data["loop"]["max_iterations"] = int(max_iterations)
        self.config = config_from_dict(data)
        save_config(self.config, self.run_dir / "run.yaml")
        if self.state.finished:
            self.state.finished = False
            self.state.iteration = done + 1
            self.state.stage = "md"
            self._save_state()

    def _setup_logging(self) -> None:
        if any(getattr(h, "_aesample_run", None) == str(self.run_dir) for h in log.handlers):
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.run_dir / "aesample.log")
        handler._aesample_run = str(self.run_dir)  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)

    # ------------------------------------------------------------------ helpers
    def _save_state(self) -> None:
        self.state.save(self.run_dir / "state.json")

    # ------------------------------------------------------------------ loop
    def run(self, progress: bool = True) -> dict[str, Any]:
        """Run stages until convergence or ``loop.max_iterations``; returns the summary.

        Holds the run directory's lock (:mod:`aesample.runlock`) meanwhile: a second process is refused.
        """
        from .threads import apply_torch_threads

        apply_torch_threads()  # the CV and the small networks gain nothing from more; extra threads spin
        with self.locked():
            return self._run(progress)

    def locked(self):
        """Context manager holding ``RUN/aesample.lock`` (re-entrant within this process)."""
        from contextlib import contextmanager

        from . import runlock

        @contextmanager
        def hold():
            held = runlock.read_lock(self.run_dir)
            if held is not None and held.alive and held.pid == os.getpid():
                yield  # an outer call of this process holds it
                return

            def stale(message):
                log.warning(message)
                print(f"aesample: {message}", file=sys.stderr, flush=True)

            runlock.acquire(self.run_dir, log=stale)
            try:
                yield
            finally:
                runlock.release(self.run_dir)

        return hold()

    def _run(self, progress: bool) -> dict[str, Any]:
        from . import loopstages
        from .verdict import sampling_warnings

        cfg = self.config
        log.info("run %s: iteration %d, stage %s", self.run_dir, self.state.iteration, self.state.stage)
        first = not self.state.finished and self.state.iteration == 0 and self.state.stage == "md"
        if first and not getattr(self, "_preflight_done", False):
            loopstages.preflight(self.config, self.system)  # errors before any MD, also on resume
        while not self.state.finished:
            k = self.state.iteration
            out = self.iteration_dir(k)
            out.mkdir(parents=True, exist_ok=True)
            if self.state.stage == "md":
                t0 = time.perf_counter()
                loopstages.run_md_stage(self, k, progress=progress)
                log.info("iteration %d: MD done in %.1f s", k, time.perf_counter() - t0)
                loopstages.write_iteration_trajectory(self, k)
                self.state.stage = "train"
                self._save_state()
            if self.state.stage == "train":
                t0 = time.perf_counter()
                loopstages.run_train_stage(self, k)
                log.info("iteration %d: training done in %.1f s", k, time.perf_counter() - t0)
                self.state.stage = "analyse"
                self._save_state()
            if self.state.stage == "analyse":
                metrics = loopstages.run_analyse_stage(self, k)
                warnings = sampling_warnings(metrics)
                if warnings:
                    metrics["warnings"] = warnings
                    atomic_write_json(out / "metrics.json", metrics)
                    for w in warnings:
                        log.warning("iteration %d: %s", k, w)
                self.state.history = [h for h in self.state.history if h["iteration"] != k] + [metrics]
                converged = loopstages.is_converged(metrics, cfg.loop)
                if progress:
                    print(loopstages.format_metrics(metrics), flush=True)
                for w in warnings:
                    print(f"  WARNING (iteration {k}): {w}", flush=True)
                if converged or k >= cfg.loop.max_iterations:
                    self.state.finished = True
                    self.state.converged = bool(converged)
                else:
                    self.state.iteration = k + 1
                    self.state.stage = "md"
                self._save_state()
        summary = self.write_summary()
        if cfg.output.plots:
            from .report import write_report

            write_report(self, self.state)
        return summary

    # ------------------------------------------------------------------ outputs
    def write_summary(self) -> dict[str, Any]:
        """``summary.json``: configuration digest, per-iteration metrics, convergence and what held it back."""
        from .verdict import run_verdict

        verdict = run_verdict(self.state, self.config.loop)
        summary = {
            "run_directory": str(self.run_dir),
            "system": self.config.system.name,
            "iterations_done": len(self.state.history),
            "finished": self.state.finished,
            "converged": self.state.converged,
            "status": verdict["status"],
            "verdict": verdict["headline"],
            "convergence_blockers": verdict["blockers"],
            "convergence_threshold": self.config.loop.convergence_threshold,
            "history": self.state.history,
        }
        atomic_write_json(self.run_dir / "summary.json", summary)
        return summary

    def status_text(self) -> str:
        """Human-readable progress of the run: converged or not (and why), running or stopped, per-iteration lines."""
        from . import runlock
        from .loopstages import format_metrics, md_progress
        from .verdict import run_verdict, sampling_warnings

        st = self.state
        verdict = run_verdict(st, self.config.loop)
        lines = [f"run {self.run_dir} ({self.config.system.name})"]
        if st.finished:
            lines.append(f"  state: finished, {verdict['headline']}")
        else:
            lock = runlock.read_lock(self.run_dir)
            if lock is not None and lock.alive is not False:
                where = runlock.describe(self.run_dir)
                lines.append(f"  state: in progress ({where}); now: iteration {st.iteration}, stage {st.stage}")
            else:
                why = runlock.describe(self.run_dir) or "not running: no aesample process holds it"
                lines.append(f"  state: stopped ({why}); next: iteration {st.iteration}, stage {st.stage}; "
                             f"continue with `aesample resume {self.run_dir}`")
        if verdict["blockers"]:
            lines.append("  not converged because:")
            lines += [f"    - {b}" for b in verdict["blockers"]]
        if st.finished and not st.converged:
            lines.append(f"  to go on: `aesample resume {self.run_dir} --max-iterations "
                         f"{self.config.loop.max_iterations + 2}`")
        if not st.finished and st.stage == "md":
            done, total = md_progress(self, st.iteration)
            if total:
                lines.append(f"  MD of iteration {st.iteration}: {done / 1000:.3f} / {total / 1000:.3f} ns")
        for metrics in st.history:
            lines.append("  " + format_metrics(metrics))
            lines += [f"    WARNING: {w}" for w in sampling_warnings(metrics)]
        return "\n".join(lines)
