"""Thread counts in effect inside the processes the package starts (torch pools, OpenMM's CPU platform)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from aesample.threads import ThreadPlan, available_cores, plan_threads


def _env_without_thread_settings():
    # what a user's shell gives: no OMP_NUM_THREADS, so torch would size its pool to the cores by itself
    return {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                              "OPENBLAS_NUM_THREADS", "OPENMM_CPU_THREADS")}


def _cli(*args, timeout=900):
    proc = subprocess.run([sys.executable, "-m", "aesample.cli", *map(str, args)], capture_output=True, text=True,
                          env=_env_without_thread_settings(), timeout=timeout)
    assert proc.returncode == 0, f"aesample {args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_plan_divides_cores_among_concurrent_walkers():
    assert plan_threads(8, 3) == ThreadPlan(openmm=2, torch_intra_op=1, torch_inter_op=1)
    assert plan_threads(2, 4).openmm == 1  # never zero
    assert plan_threads(None, 1).openmm == available_cores()
    with pytest.raises(ValueError, match="execution.threads"):
        plan_threads(0)


def test_eabf_command_runs_one_torch_thread_and_the_given_openmm_threads(tmp_path):
    if available_cores() < 2:
        pytest.skip("needs 2 cores: with one, every default is already 1 thread")
    out = tmp_path / "run"
    _cli("eabf", "--system", "alanine-dipeptide", "--cv", "phi", "--ns", "0.0004", "--report-interval", "20",
         "--segment-steps", "100", "--equilibration", "0.02", "--platform", "CPU", "--threads", "1",
         "--no-progress", "--out", out)
    threads = json.loads((out / "run.json").read_text())["threads"]
    assert threads["platform"] == "CPU"
    assert threads["openmm"] == 1 and threads["torch_intra_op"] == 1 and threads["torch_inter_op"] == 1


LOOP = """
md: {report_interval: 20, segment_steps: 500, equilibration: 0.2, seed: 11}
loop: {initial_md: 0.004, eabf_per_iteration: 0.004, max_iterations: 1, walkers: 2, walker_processes: 2}
training: {max_epochs: 10, patience: 5, batch_size: 64, seed: 3}
system: {platform: CPU}
output: {plots: false}
execution: {threads: 2}
"""


def test_walker_processes_use_the_planned_threads(tmp_path):
    if available_cores() < 2:
        pytest.skip("needs 2 cores: with one, every default is already 1 thread")
    cfg = tmp_path / "loop.yaml"
    cfg.write_text(LOOP)
    run = tmp_path / "run"
    _cli("run", cfg, "--out", run, "--quiet")
    for j in range(2):
        threads = json.loads((run / "iter_001" / f"md_{j}" / "run.json").read_text())["threads"]
        # 2 cores shared by 2 concurrent walkers: one OpenMM thread each (OpenMM's own default is every core);
        # torch one thread (its default is every core); the child was spawned with OpenMP pools of one thread
        assert threads == {"platform": "CPU", "openmm": 1, "torch_intra_op": 1, "torch_inter_op": 1,
                           "omp_num_threads_env": "1"}, f"walker {j}: {threads}"
    # iteration 0 ran in the driver's process, alone: every core of execution.threads for OpenMM
    threads0 = json.loads((run / "iter_000" / "md_0" / "run.json").read_text())["threads"]
    assert threads0["openmm"] == 2 and threads0["torch_intra_op"] == 1
