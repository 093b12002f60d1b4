"""The iterative driver end to end: run directory rules, bad input, kill -9 + resume == uninterrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

TINY = """
md: {report_interval: 20, segment_steps: 500, equilibration: 0.2, seed: 11}
loop: {initial_md: 0.004, eabf_per_iteration: 0.008, max_iterations: 2, convergence_threshold: 0.99999}
training: {max_epochs: 25, patience: 5, batch_size: 64, seed: 3}
system: {platform: Reference}
output: {plots: false}
"""


def _cli(*args, check=True, timeout=900, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "aesample.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"aesample {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_config):
    run = tmp_path_factory.mktemp("runs") / "straight"
    _cli("run", tiny_config, "--out", run, "--quiet")
    return run


def test_loop_outputs(uninterrupted):
    state = json.loads((uninterrupted / "state.json").read_text())
    assert state["finished"] and [h["iteration"] for h in state["history"]] == [0, 1, 2]
    for k in range(3):
        it = uninterrupted / f"iter_{k:03d}"
        for name in ("cv.pt", "cv.json", "model.pt", "weights.npy", "metrics.json"):
            assert (it / name).is_file(), f"{it / name} missing"
        weights = np.load(it / "weights.npy")
        # CZAR gives frames in isolated bins (no estimate) weight 0; the tiny runs are short enough to have some
        assert weights.sum() == pytest.approx(1.0) and np.all(weights >= 0) and np.mean(weights > 0) > 0.75
        m = json.loads((it / "metrics.json").read_text())
        assert m["unweighted_fraction"] == pytest.approx(np.mean(weights == 0))
    for k in (1, 2):
        m = json.loads((uninterrupted / f"iter_{k:03d}" / "metrics.json").read_text())
        assert -1.0 <= m["regression_score"] <= 1.0
        assert 0.0 <= m["dihedral_score"] <= 1.0
        from aesample import md as md_mod
        from aesample.analysis import basin_transitions, phi_psi
        from aesample.driver import LoopDriver

        frames = md_mod.load_result(uninterrupted / f"iter_{k:03d}" / "md_0").load_trajectory(
            LoopDriver.open(uninterrupted).system.mdtraj_topology)
        assert m["phi_transitions"] == basin_transitions(phi_psi(frames)[:, 0])
        assert "c7ax_in_shared_bins" in m and (m["c7ax_in_shared_bins"] is None or 0 <= m["c7ax_in_shared_bins"] <= 1)
        assert (uninterrupted / f"iter_{k:03d}" / "md_0" / "COLVAR").is_file()
        w = np.load(uninterrupted / f"iter_{k:03d}" / "weights.npy")
        assert m["effective_sample_size"] == pytest.approx(1.0 / np.sum(w**2))
        assert 1.0 <= m["effective_sample_size"] < m["frames"]  # eABF frames are reweighted unevenly
        # training.sampling_weight 0.5 (default): half of the training weight on the reweighted frames, half spread
        # evenly, so the autoencoder learns from more frames than the reweighting's ESS
        meta = json.loads((uninterrupted / f"iter_{k:03d}" / "cv.json").read_text())
        fit = 0.5 * w / w.sum() + 0.5 / len(w)
        assert meta["sampling_weight"] == 0.5 and meta["training_ess"] == pytest.approx(1.0 / np.sum(fit**2))
        assert meta["training_ess"] > m["effective_sample_size"]
        # both weightings of the hidden-barrier diagnostic are reported
        assert 0 <= m["hidden_barrier_fraction"] <= 1 and 0 <= m["hidden_barrier_sample_fraction"] <= 1
        # the share of the weight first reached in the run's second half, recomputed from the files
        from aesample.analysis import support_growth

        run0 = md_mod.load_result(uninterrupted / f"iter_{k:03d}" / "md_0")
        st = run0.state
        cells = np.floor((run0.colvar_xi() - st.grid_min) / st.bin_width).astype(int)
        flat = np.unique(cells, axis=0, return_inverse=True)[1].ravel()
        assert m["support_growth"] == pytest.approx(support_growth(flat, np.zeros(len(flat), int), w))
        # the CZAR free energy moved between half time (step 2000 of 4000) and the end; delta_f_phi_half uses the former
        assert m["free_energy_drift"] > 0 and 0 < m["free_energy_drift_frames"] <= 1
        assert m["estimator"] == "czar"
        assert "delta_f_phi_half" in m
        # kappa: the configured one capped by the CV's steepness; the CV spring period spans >= 8 steps of 2 fs
        from aesample.driver import LoopDriver
        from aesample.export import cv_stiffness, load_cv
        from aesample.loopstages import MIN_STEPS_PER_CV_PERIOD, _frames, coupling_constant

        driver = LoopDriver.open(uninterrupted)
        cv, _ = load_cv(uninterrupted / f"iter_{k - 1:03d}" / "cv.pt")
        kappa, kappa_max = coupling_constant(driver, k, cv)
        assert m["kappa"] == pytest.approx(kappa) and kappa <= driver.config.eabf.kappa
        traj = _frames(driver, k - 1)[0]
        masses = np.array([a.element.mass for a in traj.topology.atoms])
        period = 2 * np.pi / np.sqrt(kappa * cv_stiffness(cv, traj.xyz[::5].astype(np.float64), masses))
        assert period >= MIN_STEPS_PER_CV_PERIOD * 0.002 * 0.99
    # eABF iterations reweight: the weights are not uniform.
    w1 = np.load(uninterrupted / "iter_001" / "weights.npy")
    assert w1.max() > 1.01 * w1[w1 > 0].min()  # among weighted frames: a weight 0 cannot make it pass
    # one trajectory per iteration (every run's segments joined), loadable with the topology written beside it
    import mdtraj

    for k in range(3):
        it = uninterrupted / f"iter_{k:03d}"
        traj = mdtraj.load(str(it / "trajectory.dcd"), top=str(it / "topology.pdb"))
        m = json.loads((it / "metrics.json").read_text())
        assert traj.n_frames == m["frames"] and traj.n_atoms == 22
    summary = json.loads((uninterrupted / "summary.json").read_text())
    assert summary["iterations_done"] == 3
    status = _cli("status", uninterrupted).stdout
    assert "finished" in status and "iteration 2:" in status


def _checkpoint_step(path):
    try:
        return json.loads(path.read_text())["step"]
    except (OSError, json.JSONDecodeError, KeyError):
        return 0


def _run_and_kill_when(config, run, ready, what):
    """Start ``aesample run`` and SIGKILL it once ``ready()`` holds (fails if it finishes or never gets there)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "aesample.cli", "run", str(config), "--out", str(run), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 600
    try:
        while time.time() < deadline:
            if ready():
                break
            if proc.poll() is not None:
                pytest.fail("the run finished before it could be killed")
            time.sleep(0.02)
        else:
            pytest.fail(f"never reached: {what}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_kill_and_resume_matches_uninterrupted(tmp_path, tiny_config, uninterrupted):
    run = tmp_path / "killed"
    checkpoint = run / "iter_001" / "md_0" / "checkpoint.json"
    _run_and_kill_when(tiny_config, run, lambda: _checkpoint_step(checkpoint) >= 1000,
                       "iteration 1's eABF past its second checkpoint")
    state = json.loads((run / "state.json").read_text())
    assert state["iteration"] == 1 and state["stage"] == "md" and not state["finished"]
    steps_at_kill = json.loads(checkpoint.read_text())["step"]
    assert 1000 <= steps_at_kill < 4000  # killed mid-iteration
    status = _cli("status", run).stdout  # nothing runs any more, and status says so
    assert "stopped (not running: stale lock of PID" in status and f"aesample resume {run}" in status
    assert "in progress" not in status

    _cli("resume", run, "--quiet")

    for k in range(3):
        a = json.loads((uninterrupted / f"iter_{k:03d}" / "metrics.json").read_text())
        b = json.loads((run / f"iter_{k:03d}" / "metrics.json").read_text())
        for key in ("frames", "best_val_loss", "ns"):
            assert a.get(key) == b.get(key), f"iteration {k}: {key} differs ({a.get(key)} vs {b.get(key)})"
        # Scores go through LAPACK, whose summation order may differ between processes: round-off only.
        for key in ("regression_score", "dihedral_score", "free_energy_drift"):
            if a.get(key) is None:
                assert b.get(key) is None
            else:
                assert a[key] == pytest.approx(b[key], rel=1e-10, abs=1e-12), f"iteration {k}: {key} differs"
        np.testing.assert_array_equal(np.load(uninterrupted / f"iter_{k:03d}" / "weights.npy"),
                                      np.load(run / f"iter_{k:03d}" / "weights.npy"))
        sa = torch.load(uninterrupted / f"iter_{k:03d}" / "model.pt", weights_only=True)["state_dict"]
        sb = torch.load(run / f"iter_{k:03d}" / "model.pt", weights_only=True)["state_dict"]
        for name in sa:
            assert torch.equal(sa[name], sb[name]), f"iteration {k}: parameter {name} differs"
    assert (run / "iter_001" / "md_0" / "COLVAR").read_text() == (uninterrupted / "iter_001" / "md_0" / "COLVAR").read_text()


def test_convergence_criterion_with_free_energy_tolerance():
    from aesample.config import LoopConfig
    from aesample.loopstages import is_converged

    plain = LoopConfig(convergence_threshold=0.99, free_energy_tolerance=None)
    strict = LoopConfig(convergence_threshold=0.99, free_energy_tolerance=1.0)
    assert LoopConfig().free_energy_tolerance == 1.0  # on by default
    settled = {"iteration": 2, "regression_score": 0.995, "free_energy_drift": 0.4}
    moving = {"iteration": 2, "regression_score": 0.995, "free_energy_drift": 2.5}
    assert is_converged(settled, plain) and is_converged(moving, plain)
    assert is_converged(settled, strict) and not is_converged(moving, strict)
    assert not is_converged({"iteration": 2, "regression_score": 0.995, "free_energy_drift": None}, strict)
    assert not is_converged({"iteration": 2, "regression_score": 0.98, "free_energy_drift": 0.1}, strict)
    assert not is_converged({"regression_score": None}, plain)
    # iteration 1 (along the CV of unbiased MD) never ends the loop by default, however settled it looks
    assert LoopConfig().min_iterations == 2
    assert not is_converged(dict(settled, iteration=1), plain) and not is_converged(dict(settled, iteration=1), strict)
    assert is_converged(dict(settled, iteration=1), LoopConfig(min_iterations=1, free_energy_tolerance=None))
    # with walkers, their standard error must be within the tolerance too (and be there)
    walkers = LoopConfig(convergence_threshold=0.99, free_energy_tolerance=1.0, walkers=4)
    assert is_converged(dict(settled, free_energy_sem=0.5), walkers)
    assert not is_converged(dict(settled, free_energy_sem=1.5), walkers)
    assert not is_converged(settled, walkers)
    assert is_converged(dict(settled, free_energy_sem=1.5), strict)  # one walker: no such term


def test_existing_run_directory_is_not_overwritten(tmp_path, tiny_config):
    run = tmp_path / "occupied"
    run.mkdir()
    (run / "precious.txt").write_text("data")
    proc = _cli("run", tiny_config, "--out", run, check=False)
    assert proc.returncode == 2
    assert f"run directory {run} already exists and is not empty" in proc.stderr
    assert (run / "precious.txt").read_text() == "data"


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--system", "lysozyme"], "system.name: unknown system 'lysozyme'"),
        (["run", "missing.yaml"], "config file not found: missing.yaml"),
        (["run", "--pdb", "nothere.pdb"], "system.pdb: file not found: nothere.pdb"),
        (["resume", "no-such-run"], "no-such-run is not an aesample run directory"),
        (["status", "no-such-run"], "no-such-run is not an aesample run directory"),
    ],
)
def test_bad_input_exit_code_2(tmp_path, args, message):
    proc = _cli(*args, check=False, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_malformed_yaml_exit_code_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loop: {max_iterations: [\n")
    proc = _cli("run", bad, "--out", tmp_path / "r", check=False)
    assert proc.returncode == 2 and f"{bad}: malformed YAML" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_non_finite_start_exit_code_2(tmp_path):
    from aesample.systems import systems_dir

    lines = (systems_dir() / "alanine_dipeptide_vacuum.pdb").read_text().splitlines()
    # Put atom 2 exactly on atom 1: the Lennard-Jones/Coulomb energy is infinite.
    atom1 = next(l for l in lines if l.startswith("ATOM"))
    clash = [l if not l.startswith("ATOM      2") else l[:30] + atom1[30:54] + l[54:] for l in lines]
    pdb = tmp_path / "clash.pdb"
    pdb.write_text("\n".join(clash) + "\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY)
    proc = _cli("run", cfg, "--pdb", pdb, "--out", tmp_path / "r", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "clash.pdb: potential energy of the starting structure is not finite" in proc.stderr


CHIGNOLIN = """
md: {report_interval: 20, segment_steps: 200, equilibration: 0.1, seed: 5}
loop: {initial_md: 0.0012, eabf_per_iteration: 0.0008, max_iterations: 1}
training: {max_epochs: 10, patience: 3, batch_size: 32}
output: {plots: false}
"""


def test_chignolin_starts_checkpoints_and_resumes(tmp_path):
    cfg = tmp_path / "chig.yaml"
    cfg.write_text(CHIGNOLIN)
    run = tmp_path / "chig"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "aesample.cli", "run", str(cfg), "--system", "chignolin",
                             "--out", str(run), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    checkpoint = run / "iter_000" / "md_0" / "checkpoint.json"
    deadline = time.time() + 600
    try:
        while time.time() < deadline and not checkpoint.is_file():
            assert proc.poll() is None, "the chignolin run ended before its first checkpoint"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    first = json.loads(checkpoint.read_text())["step"]
    assert 200 <= first < 600
    assert "stage md" in _cli("status", run).stdout
    _cli("resume", run, "--quiet")
    state = json.loads((run / "state.json").read_text())
    assert state["finished"] and len(state["history"]) == 2
    metrics = state["history"][1]
    assert 0.0 <= metrics["rmsd_ca_mean"] < 0.3  # the hairpin is intact in so short a run
    assert metrics["regression_score"] is not None


def test_custom_pdb_selection_follows_its_size(tmp_path):
    from aesample.config import config_from_dict, effective_config
    from aesample.driver import LoopDriver
    from aesample.systems import systems_dir

    pdb = systems_dir() / "chignolin_cln025_5awl.pdb"
    cfg = effective_config(config_from_dict({"system": {"pdb": str(pdb), "solvent": "implicit"}}))
    assert cfg.cv.selection is None  # not knowable before the structure is read
    driver = LoopDriver.create(cfg, tmp_path / "custom")
    assert driver.config.cv.selection == "name CA"  # 10 residues: alpha carbons
    assert LoopDriver.open(tmp_path / "custom").config.cv.selection == "name CA"  # saved in run.yaml


def test_resume_extends_a_finished_run(tmp_path, uninterrupted):
    import shutil

    run = tmp_path / "more"
    shutil.copytree(uninterrupted, run)
    before = [json.loads((run / f"iter_{k:03d}" / "metrics.json").read_text()) for k in range(3)]
    # not above the last iteration done: refused, nothing changed
    bad = _cli("resume", run, "--max-iterations", "2", "--quiet", check=False)
    assert bad.returncode != 0 and "--max-iterations 2" in bad.stderr + bad.stdout
    assert "max_iterations: 2" in (run / "run.yaml").read_text()
    _cli("resume", run, "--max-iterations", "3", "--quiet")
    state = json.loads((run / "state.json").read_text())
    assert state["finished"] and [h["iteration"] for h in state["history"]] == [0, 1, 2, 3]
    assert "max_iterations: 3" in (run / "run.yaml").read_text()
    assert (run / "iter_003" / "md_0" / "COLVAR").is_file() and (run / "iter_003" / "cv.pt").is_file()
    for k in range(3):  # earlier iterations untouched
        assert json.loads((run / f"iter_{k:03d}" / "metrics.json").read_text()) == before[k]
    # a converged run is not reopened
    state["converged"] = True
    (run / "state.json").write_text(json.dumps(state))
    refused = _cli("resume", run, "--max-iterations", "5", "--quiet", check=False)
    assert refused.returncode != 0 and "converged at iteration 3" in refused.stderr + refused.stdout


def _walkers_config(tmp_path, processes):
    path = tmp_path / f"walkers{processes}.yaml"
    path.write_text(TINY.replace("max_iterations: 2,", f"max_iterations: 1, walkers: 2, walker_processes: {processes},"))
    return path


@pytest.fixture(scope="module")
def walkers_parallel(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("walkers")
    run = tmp / "parallel"
    _cli("run", _walkers_config(tmp, 2), "--out", run, "--quiet")
    return run


def _pooled_czar_weights(it):
    """Iteration weights recomputed by hand: both walkers' accumulators summed, COLVAR rows concatenated."""
    from aesample import estimators as est
    from aesample.md import load_result

    runs = [load_result(it / f"md_{j}") for j in range(2)]
    states = [r.state for r in runs]
    czar = states[0].czar + states[1].czar
    zcount = states[0].zcount + states[1].zcount
    st = states[0]
    # on the CZAR grid (its own bins), CZAR's identity between neighbouring bins solved with count weights
    A = est.czar_free_energy(czar, zcount, st.z_bin_width, runs[0].temperature, st.periodic,
                             min_count=int(st.meta["czar_min_count"]))
    xi = np.concatenate([r.colvar_xi() for r in runs])
    return est.czar_reweighting_weights(xi, A, zcount, st.grid_min, st.z_bin_width, runs[0].temperature,
                                        st.periodic)


def test_walkers_run_in_processes_and_are_pooled(tmp_path, walkers_parallel, uninterrupted):
    it = walkers_parallel / "iter_001"
    colvars = [(it / f"md_{j}" / "COLVAR").read_text() for j in range(2)]
    # walker 0 is the single-walker run (same start, seed, CV); walker 1 has its own seed
    assert colvars[0] == (uninterrupted / "iter_001" / "md_0" / "COLVAR").read_text()
    assert colvars[1] != colvars[0]
    m = json.loads((it / "metrics.json").read_text())
    single = json.loads((uninterrupted / "iter_001" / "metrics.json").read_text())
    assert m["frames"] == 2 * single["frames"] and m["ns"] == pytest.approx(2 * 0.008)
    # training weights: the CZAR estimate of the pooled accumulators on the pooled frames, not walker 0's alone
    weights = np.load(it / "weights.npy")
    np.testing.assert_allclose(weights, _pooled_czar_weights(it), rtol=1e-12, atol=0)
    alone = np.load(uninterrupted / "iter_001" / "weights.npy")
    assert not np.allclose(weights[: len(alone)] / weights[: len(alone)].sum(), alone)
    assert "delta_f_phi_walkers" in m and len(m["delta_f_phi_walkers"]) == 2
    # the named basins per walker; with walkers their scatter is the least error bar of the pooled Delta F
    assert len(m["basin_delta_f_walkers"]) == 2
    basin = m["basin_delta_f"]
    if m["basin_delta_f_sem"] is not None:
        assert basin["error"] >= m["basin_delta_f_sem"] and basin["error_from"] is not None
    walkers = [v for v in m["basin_delta_f_walkers"] if v is not None]
    if basin["value"] is not None and len(walkers) == 2:  # and the gap to the walkers' mean
        assert m["basin_delta_f_walkers_gap"] == pytest.approx(abs(basin["value"] - np.mean(walkers)))
        assert basin["error"] >= m["basin_delta_f_walkers_gap"]
    # each half of the samples on its own (every walker saved a half-time state: 8 segments of 500 steps)
    assert "basin_delta_f_first_half" in m and "basin_delta_f_second_half" in m
    halves = [m["basin_delta_f_first_half"], m["basin_delta_f_second_half"]]
    if basin["value"] is not None and None not in halves:
        assert basin["error"] >= 0.5 * abs(halves[1] - halves[0]) - 1e-12
    # the walkers' standard error of the pooled CZAR free energy, as estimators.walker_standard_error gives it
    from aesample import estimators as est
    from aesample.md import PooledRuns, load_result

    runs = [load_result(it / f"md_{j}") for j in range(2)]
    pooled, st = PooledRuns(runs), runs[0].state
    sem, _ = est.walker_standard_error([r.free_energy() for r in runs], pooled.free_energy(), pooled.colvar_xi(),
                                       st.grid_min, st.z_bin_width, st.periodic)
    assert m["free_energy_sem"] == pytest.approx(sem) and m["free_energy_sem"] > 0
    # the same walkers one after another in the driver's process: identical trajectories
    run = tmp_path / "sequential"
    _cli("run", _walkers_config(tmp_path, 1), "--out", run, "--quiet")
    for j in range(2):
        assert (run / "iter_001" / f"md_{j}" / "COLVAR").read_text() == colvars[j]
    np.testing.assert_array_equal(np.load(run / "iter_001" / "weights.npy"), weights)


def test_killed_driver_takes_its_walkers_along_and_resumes(tmp_path, walkers_parallel):
    run = tmp_path / "killed"
    checkpoints = [run / "iter_001" / f"md_{j}" / "checkpoint.json" for j in range(2)]

    def steps():
        return [_checkpoint_step(c) for c in checkpoints]

    _run_and_kill_when(_walkers_config(tmp_path, 2), run, lambda: min(steps()) >= 1000,
                       "both walkers past their second checkpoint")
    # the walker processes died with the driver: nothing moves any more (a segment takes well under a second)
    time.sleep(2.0)
    before = steps(), [(c.parent / "COLVAR").stat().st_size for c in checkpoints]
    time.sleep(3.0)
    assert (steps(), [(c.parent / "COLVAR").stat().st_size for c in checkpoints]) == before
    assert max(before[0]) < 4000  # killed mid-iteration
    _cli("resume", run, "--quiet")
    for j in range(2):
        name = f"iter_001/md_{j}/COLVAR"
        assert (run / name).read_text() == (walkers_parallel / name).read_text()
    np.testing.assert_array_equal(np.load(run / "iter_001" / "weights.npy"),
                                  np.load(walkers_parallel / "iter_001" / "weights.npy"))


def test_a_run_started_before_sampling_weight_resumes_with_the_training_it_started_with(tmp_path):
    from aesample.config import config_from_dict, save_config
    from aesample.runlayout import RunLayout

    new = tmp_path / "new"
    new.mkdir()
    save_config(config_from_dict({}), new / "run.yaml")
    (new / "state.json").write_text("{}")
    assert "sampling_weight: 0.5" in (new / "run.yaml").read_text()
    assert RunLayout.read_config(new).training.sampling_weight == 0.5
    # a run.yaml written before the field existed: its iterations were trained on the reweighted frames alone
    old = tmp_path / "old"
    old.mkdir()
    text = "\n".join(line for line in (new / "run.yaml").read_text().splitlines() if "sampling_weight" not in line)
    (old / "run.yaml").write_text(text + "\n")
    (old / "state.json").write_text("{}")
    cfg = RunLayout.read_config(old)
    assert cfg.training.sampling_weight == 0.0 and cfg.training.seed == 0 and cfg.loop.walkers == 1
