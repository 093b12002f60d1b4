"""What a run tells its user (issue 18): exit codes and messages, the run lock, status after a kill, the report's
converged line and first screen, warnings, one trajectory per iteration with its topology, plots, units."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import mdtraj
import numpy as np
import pytest

from .test_driver import TINY  # the same tiny loop settings


def _cli(*args, cwd=None, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "aesample.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=cwd)


def _config(tmp_path, text=TINY):
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path


def _new_run(tmp_path, name="run", **loop):
    from aesample.config import config_from_dict, effective_config
    from aesample.driver import LoopDriver
    import yaml

    data = yaml.safe_load(TINY)
    data["loop"].update(loop)
    return LoopDriver.create(effective_config(config_from_dict(data)), tmp_path / name)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(run_dir: Path, pid: int, host: str | None = None) -> None:
    from aesample.runlock import LOCK_NAME, _start_ticks

    (run_dir / LOCK_NAME).write_text(json.dumps({
        "pid": pid, "host": host or socket.gethostname(), "start_ticks": _start_ticks(pid),
        "started": "2026-01-01 00:00:00", "command": "aesample resume x"}))


# ------------------------------------------------------------------------------------------- command line
def test_version():
    proc = _cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("aesample ") and proc.stdout.split()[1][0].isdigit()


def test_malformed_yaml_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loop: {max_iterations: [\n")
    proc = _cli("run", bad, "--out", tmp_path / "r")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr  # one line, as the README promises
    assert f"{bad}: malformed YAML: line 2, column 1" in proc.stderr


def test_system_and_pdb_together_are_refused(tmp_path):
    from aesample.systems import systems_dir

    proc = _cli("run", "--system", "chignolin", "--pdb", systems_dir() / "alanine_dipeptide_vacuum.pdb",
                "--out", tmp_path / "r")
    assert proc.returncode == 2
    assert "--system chignolin and --pdb" in proc.stderr and "not both" in proc.stderr
    assert not (tmp_path / "r").exists()
    cfg = tmp_path / "chig.yaml"
    cfg.write_text("system: {name: chignolin}\n")
    proc = _cli("config", cfg, "--pdb", systems_dir() / "alanine_dipeptide_vacuum.pdb")
    assert proc.returncode == 2 and "system.name is 'chignolin' but --pdb" in proc.stderr


def test_non_pdb_file_message(tmp_path):
    junk = tmp_path / "notes.pdb"
    junk.write_text("these are my notes\n")
    proc = _cli("run", "--pdb", junk, "--out", tmp_path / "r")
    assert proc.returncode == 2
    assert f"{junk}: not a PDB file (no ATOM or HETATM record in it)" in proc.stderr
    assert "list index out of range" not in proc.stderr and not (tmp_path / "r").exists()


def test_bad_selection_is_refused_before_any_md(tmp_path):
    proc = _cli("run", _config(tmp_path), "--set", "cv.selection=name XYZ", "--out", tmp_path / "r")
    assert proc.returncode == 2
    assert "cv.selection: atom selection 'name XYZ' matches no atom" in proc.stderr
    assert not (tmp_path / "r").exists()  # no run directory left "in progress"


def test_preflight_checks_starting_structures_and_selection_size(tmp_path):
    from aesample.config import config_from_dict, effective_config
    from aesample.driver import LoopDriver

    cfg = effective_config(config_from_dict({"cv": {"selection": "name CA"}}))  # one atom: cannot be aligned
    with pytest.raises(ValueError, match="selects 1 atom"):
        LoopDriver.create(cfg, tmp_path / "one")
    junk = tmp_path / "start.pdb"
    junk.write_text("nothing here\n")
    cfg = effective_config(config_from_dict({"loop": {"initial_structures": [str(junk)]}}))
    with pytest.raises(ValueError, match="loop.initial_structures: .*not a PDB file"):
        LoopDriver.create(cfg, tmp_path / "two")
    assert not (tmp_path / "one").exists() and not (tmp_path / "two").exists()


def test_eabf_help_is_plain_text():
    proc = _cli("eabf", "--help")
    assert proc.returncode == 0
    assert "``" not in proc.stdout and "Examples::" not in proc.stdout
    assert "aesample eabf --system alanine-dipeptide --cv phi --ns 2 --out runs/phi" in proc.stdout


def test_eabf_bad_length_fails_before_anything(tmp_path):
    out = tmp_path / "e"
    proc = _cli("eabf", "--cv", "phi", "--ns", "-1", "--out", out)
    assert proc.returncode == 2 and "--ns: must be > 0, got -1.0" in proc.stderr
    assert proc.stdout == "" and not out.exists()  # no header printed, no directory left behind


def test_eabf_refuses_a_non_empty_out(tmp_path):
    out = tmp_path / "loop_run"
    out.mkdir()
    (out / "state.json").write_text("{}")
    proc = _cli("eabf", "--cv", "phi", "--ns", "0.001", "--out", out)
    assert proc.returncode == 2 and "directory exists and is not empty" in proc.stderr and "--resume" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["state.json"]
    proc = _cli("eabf", "--cv", "phi", "--ns", "0.001", "--out", out, "--resume")
    assert proc.returncode == 2 and "no eABF run to continue" in proc.stderr


def test_eabf_start_structure_is_used_and_checked(tmp_path):
    c7ax = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / "adp_c7ax.pdb"
    out = tmp_path / "e"
    proc = _cli("eabf", "--cv", "phi", "--ns", "0.0004", "--out", out, "--platform", "Reference", "--report-interval",
                "50", "--segment-steps", "200", "--equilibration", "0", "--start", c7ax, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    phi = mdtraj.compute_phi(mdtraj.load(str(out / "trajectory.dcd"), top=str(out / "topology.pdb")))[1][:, 0]
    assert 0.3 < phi[0] < 2.0  # C7ax, where the file is; the built structure is at phi < 0
    short = tmp_path / "short.pdb"  # the first five atoms only
    lines = [line for line in c7ax.read_text().splitlines() if line.startswith(("ATOM", "HETATM"))][:5]
    short.write_text("\n".join(lines + ["END"]) + "\n")
    proc = _cli("eabf", "--cv", "phi", "--ns", "0.0004", "--out", tmp_path / "f", "--start", short)
    assert proc.returncode == 2 and f"--start: {short} has 5 atoms but the system has 22" in proc.stderr
    assert not (tmp_path / "f").exists()
    proc = _cli("eabf", "--cv", "phi", "--ns", "0.0004", "--out", tmp_path / "g", "--start", tmp_path / "none.pdb")
    assert proc.returncode == 2 and "--start" in proc.stderr and "no such file" in proc.stderr


def test_eabf_writes_one_trajectory_with_topology_and_units(tmp_path):
    out = tmp_path / "e"
    proc = _cli("eabf", "--cv", "phi", "--ns", "0.002", "--out", out, "--platform", "Reference", "--report-interval",
                "50", "--segment-steps", "500", "--equilibration", "0.1", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    traj = mdtraj.load(str(out / "trajectory.dcd"), top=str(out / "topology.pdb"))
    assert traj.n_atoms == 22 and traj.n_frames == 20  # 1000 steps / 50, four segments joined
    colvar = (out / "COLVAR").read_text().splitlines()
    assert colvar[1].startswith("# units: time ps; xi_*, lambda_*") and "fbias_* kJ/mol per" in colvar[1]
    assert sum(1 for line in colvar if not line.startswith("#")) == traj.n_frames
    pmf = (out / "eabf.czar.pmf").read_text()
    if "nan" in pmf.split("\n\n", 1)[1]:  # unvisited bins: the fill value is stated in the header
        assert "# nan: no estimate in this bin" in pmf


# ------------------------------------------------------------------------------------------- lock and status
def test_lock_refuses_a_second_process_and_replaces_a_stale_one(tmp_path):
    from aesample import runlock

    run = tmp_path / "r"
    run.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(run, sleeper.pid)
        with pytest.raises(runlock.RunLockedError, match=f"in use by PID {sleeper.pid} on {socket.gethostname()}"):
            runlock.acquire(run)
        assert runlock.describe(run).startswith(f"running: PID {sleeper.pid}")
    finally:
        sleeper.kill()
        sleeper.wait()
    dead = _dead_pid()
    _write_lock(run, dead)
    assert runlock.describe(run).startswith(f"not running: stale lock of PID {dead}")
    said = []
    runlock.acquire(run, log=said.append)
    assert said and f"stale lock of PID {dead}" in said[0]
    assert json.loads((run / runlock.LOCK_NAME).read_text())["pid"] == os.getpid()
    runlock.release(run)
    assert not (run / runlock.LOCK_NAME).exists()
    # another host cannot be checked: never taken over
    _write_lock(run, dead, host="elsewhere.example")
    with pytest.raises(runlock.RunLockedError, match="another host"):
        runlock.acquire(run)


def test_resume_while_running_is_refused_and_status_tells(tmp_path):
    driver = _new_run(tmp_path)
    run = driver.run_dir
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(run, sleeper.pid)
        proc = _cli("resume", run, "--quiet")
        assert proc.returncode == 2 and f"is in use by PID {sleeper.pid}" in proc.stderr
        assert not (run / "iter_000").exists()  # nothing written
        status = _cli("status", run).stdout
        assert f"in progress (running: PID {sleeper.pid}" in status
    finally:
        sleeper.kill()
        sleeper.wait()
    dead = _dead_pid()
    _write_lock(run, dead)  # what a kill -9 leaves behind
    status = _cli("status", run).stdout
    assert f"stopped (not running: stale lock of PID {dead}" in status
    assert "next: iteration 0, stage md" in status and f"aesample resume {run}" in status


# ------------------------------------------------------------------------------------------- report and verdict
def _finished(tmp_path, converged, history):
    driver = _new_run(tmp_path, name="conv" if converged else "notconv")
    driver.state.history = history
    driver.state.finished = True
    driver.state.converged = converged
    driver.state.iteration = history[-1]["iteration"]
    driver._save_state()
    return driver


HISTORY = [
    {"iteration": 0, "frames": 100, "effective_sample_size": 100.0, "unweighted_fraction": 0.0, "ns": 0.01},
    {"iteration": 1, "frames": 100, "effective_sample_size": 40.0, "unweighted_fraction": 0.1,
     "regression_score": 0.95, "free_energy_drift": 2.5, "delta_f_phi": 9.1, "phi_transitions": 12, "ns": 0.01},
    {"iteration": 2, "frames": 100, "effective_sample_size": 1.2, "unweighted_fraction": 0.05,
     "regression_score": 0.999996, "free_energy_drift": 2.0, "training_epochs": 34, "ns": 0.01,
     "basin_delta_f": {"definition": "C7ax (0 < phi < 2.3 rad) vs the rest", "value": None, "error": None,
                       "status": "not sampled", "reason": "C7ax never visited"}},
]


def test_report_and_status_say_not_converged_and_why(tmp_path):
    from aesample.report import write_report

    driver = _finished(tmp_path, False, HISTORY)
    write_report(driver)
    summary = driver.write_summary()
    page = (driver.run_dir / "report.html").read_text()
    md = (driver.run_dir / "report.md").read_text()
    for text in (page, md):
        assert "NOT converged: stopped at loop.max_iterations (2) after iteration 2" in text
        assert "loop.min_iterations" not in text.split("All metrics")[0]  # iteration 2 passed that condition
        assert "vs the rest: not sampled (C7ax never visited)" in text
        assert "free-energy drift 2.00 kJ/mol &gt; loop.free_energy_tolerance 1.0 kJ/mol" in text.replace(">", "&gt;")
        assert f"aesample resume {driver.run_dir} --max-iterations 4" in text
        assert "weights collapsed: effective sample size 1.2 of 100 frames" in text
        assert "R² 0.999996 says nothing" in text
        assert "trajectory.dcd" in text and "topology.pdb" in text
    # the first screen: the verdict before any table of all metrics or plots
    assert page.index("id='verdict'") < page.index("<h2>All metrics")
    assert "width=\"420\"" not in page and "width='420'" not in page  # plots at their own size
    assert summary["converged"] is False and summary["status"] == "not converged"
    status = driver.status_text()
    assert "finished, NOT converged" in status and "WARNING: weights collapsed" in status
    # sampled fraction and ESS per iteration in the first table
    assert "<td>0.90</td>" in page and "<td>1.2 / 100</td>" in page


def test_blockers_from_metrics_or_derived():
    from aesample.config import LoopConfig
    from aesample.verdict import convergence_blockers

    loop = LoopConfig(convergence_threshold=0.99, free_energy_tolerance=1.0)
    given = {"iteration": 3, "convergence_blockers": ["the lead's reason"], "regression_score": 0.5}
    assert convergence_blockers(given, loop) == ["the lead's reason"]
    derived = convergence_blockers({"iteration": 1, "regression_score": 0.95, "free_energy_drift": 2.5}, loop)
    assert len(derived) == 3
    assert "loop.min_iterations (2)" in derived[0] and "0.9500 < loop.convergence_threshold 0.99" in derived[1]
    assert "drift 2.50 kJ/mol > loop.free_energy_tolerance 1.0" in derived[2]
    assert convergence_blockers({"iteration": 2, "regression_score": 0.995, "free_energy_drift": 0.4}, loop) == []


def test_report_says_converged(tmp_path):
    from aesample.report import write_report

    history = [dict(h) for h in HISTORY[:2]] + [{"iteration": 2, "frames": 100, "effective_sample_size": 60.0,
                                                   "unweighted_fraction": 0.0, "regression_score": 0.995,
                                                   "free_energy_drift": 0.4, "free_energy_error": 0.7,
                                                   "delta_f_phi": 8.7, "delta_f_phi_sem": 0.8,
                                                   "phi_transitions": 12, "ns": 0.01}]
    driver = _finished(tmp_path, True, history)
    write_report(driver)
    page = (driver.run_dir / "report.html").read_text()
    assert "converged at iteration 2" in page and "NOT converged" not in page and "Not converged because" not in page
    assert "error ± 0.70 kJ/mol" in page
    assert "ΔF C7ax (φ &gt; 0) − C7eq/C5 (φ &lt; 0): 8.70 ± 0.80 kJ/mol, 12 C7eq↔C7ax transitions" in page
    assert "finished, converged at iteration 2" in driver.status_text()


def test_driver_logs_and_stores_a_collapse_warning(tmp_path, monkeypatch):
    """The loop with its stages replaced by stand-ins: a collapsed ESS is logged, printed and kept in metrics."""
    from aesample import loopstages

    driver = _new_run(tmp_path, max_iterations=1, min_iterations=1)
    monkeypatch.setattr(loopstages, "run_md_stage", lambda d, k, progress=True: None)
    monkeypatch.setattr(loopstages, "write_iteration_trajectory", lambda d, k: None)
    monkeypatch.setattr(loopstages, "run_train_stage", lambda d, k: None)

    def analyse(d, k):
        m = dict(HISTORY[2], iteration=k) if k else dict(HISTORY[0])
        m.pop("basin_delta_f", None)
        (d.iteration_dir(k) / "metrics.json").write_text(json.dumps(m))
        return m

    monkeypatch.setattr(loopstages, "run_analyse_stage", analyse)
    driver.run(progress=False)
    log_text = (driver.run_dir / "aesample.log").read_text()
    assert "WARNING iteration 1: weights collapsed: effective sample size 1.2 of 100 frames" in log_text
    stored = json.loads((driver.iteration_dir(1) / "metrics.json").read_text())
    assert any("weights collapsed" in w for w in stored["warnings"])
    assert not (driver.run_dir / "aesample.lock").exists()  # released at the end
    for handler in list(logging.getLogger("aesample").handlers):
        if getattr(handler, "_aesample_run", None) == str(driver.run_dir):
            logging.getLogger("aesample").removeHandler(handler)
            handler.close()


# ------------------------------------------------------------------------------------------- trajectories
def test_custom_pdb_iteration_has_one_trajectory_and_its_topology(tmp_path):
    """A heavy-atom PDB (10 atoms): PDBFixer adds the hydrogens, so the trajectory needs the topology written
    beside it, not the input PDB."""
    from aesample import loopstages
    from aesample.config import config_from_dict, effective_config
    from aesample.driver import LoopDriver
    from aesample.systems import systems_dir
    import yaml

    lines = (systems_dir() / "alanine_dipeptide_vacuum.pdb").read_text().splitlines()
    heavy = [ln for ln in lines if not (ln.startswith(("ATOM", "HETATM")) and ln[12:16].strip().lstrip("0123456789")
                                         .startswith("H")) and not ln.startswith("CONECT")]
    pdb = tmp_path / "adp_heavy.pdb"
    pdb.write_text("\n".join(heavy) + "\n")
    assert mdtraj.load(str(pdb)).n_atoms == 10
    data = yaml.safe_load(TINY)
    data["system"].update({"pdb": str(pdb), "solvent": "vacuum"})
    data["md"]["segment_steps"] = 200  # several segments to join
    driver = LoopDriver.create(effective_config(config_from_dict(data)), tmp_path / "custom")
    loopstages.run_md_stage(driver, 0, progress=False)
    path = loopstages.write_iteration_trajectory(driver, 0)
    it = driver.iteration_dir(0)
    assert path == it / "trajectory.dcd"
    assert len(list((it / "md_0" / "traj").glob("seg_*.dcd"))) == 10
    traj = mdtraj.load(str(path), top=str(it / "topology.pdb"))
    assert traj.n_atoms == 22 and traj.n_frames == 100  # 2000 steps / 20
    with pytest.raises(ValueError):
        mdtraj.load(str(path), top=str(pdb))  # what the user had before: the input PDB does not fit


# ------------------------------------------------------------------------------------------- plots and grids
def test_plots_have_integer_iterations_and_readable_cv_labels(tmp_path, monkeypatch):
    from aesample import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    plots.plot_scores([1, 2], [0.9, 0.95], 0.99, tmp_path / "s.png")
    ax = figures[-1].axes[0]
    figures[-1].canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    plots.plot_scores([1], [0.9], 0.99, tmp_path / "one.png")  # one iteration: still whole-number ticks
    ax = figures[-1].axes[0]
    figures[-1].canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks == [1.0]
    centers = [np.linspace(-1, 1, 5)] * 2
    plots.plot_free_energy(centers, np.zeros((5, 5)), tmp_path / "f.png", "iteration 2: CZAR free energy along xi_1",
                           cv_label="xi_1")
    ax = figures[-1].axes[0]
    assert ax.get_xlabel() == r"$\xi_{1}$, component 1" and ax.get_ylabel() == r"$\xi_{1}$, component 2"
    assert "the CV learned at iteration 1" in ax.get_title()


def test_grid_file_states_its_fill_value(tmp_path):
    from aesample.outputs import UNESTIMATED_NOTE, read_grid, write_grid

    write_grid(tmp_path / "g.pmf", np.array([1.0, np.nan, 2.0]), [0.0], [1.0], [False], units="kJ/mol")
    assert f"# {UNESTIMATED_NOTE}" in (tmp_path / "g.pmf").read_text()
    assert np.isnan(read_grid(tmp_path / "g.pmf")[0][1])
    write_grid(tmp_path / "h.pmf", np.array([1.0, 2.0]), [0.0], [1.0], [False], units="kJ/mol")
    assert UNESTIMATED_NOTE not in (tmp_path / "h.pmf").read_text()


def test_report_free_energy_error_is_at_least_the_walkers_standard_error():
    # seed 3 of the cpu-long loop, iteration 3: the pooled run's own error 0.38 against a walkers' SEM of 1.58
    from aesample.report import _free_energy_error, _free_energy_line

    m = {"iteration": 3, "free_energy_error": 0.38, "free_energy_sem": 1.58}
    assert _free_energy_error(m) == (1.58, "walkers' standard error")
    assert "walkers' standard error ± 1.58 kJ/mol" in _free_energy_line(m)
    assert _free_energy_error(dict(m, free_energy_error=2.0)) == (2.0, "error")
    assert _free_energy_error({"iteration": 1, "free_energy_error": 0.7}) == (0.7, "error")
    assert _free_energy_error({"iteration": 1}) == (None, "")
