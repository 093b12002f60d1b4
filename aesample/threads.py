"""Thread counts of every process the package runs: torch's intra-/inter-op pools and OpenMM's CPU platform.

Why this module exists: the learned CV inside an eABF step is a few hundred tiny TorchScript ops on ~30 numbers.
Torch's default intra-op pool (one thread per core) gains nothing on such ops, and its worker threads spin while
waiting; with any other CPU-bound process on the machine they fight it for the cores and an eABF run becomes an
order of magnitude slower (see ``benchmarks/RESULTS.md``, "Threads"). So every process the package starts sets
its pools explicitly, from one setting (``execution.threads`` in the config, ``--threads`` on the command line):

* torch runs one intra-op and one inter-op thread in MD processes (the CV is too small to split);
* OpenMM's CPU platform gets the cores given to the process (``threads`` divided among concurrent walkers);
* spawned children inherit ``OMP_NUM_THREADS=1`` (and the MKL/OpenBLAS equivalents), so the OpenMP pools that
  size themselves at import cannot oversubscribe before the child applies its own plan.

Training sets its own count (``training.num_threads``) around the optimisation loop.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Dict, Iterator, Optional

__all__ = ["ThreadPlan", "available_cores", "plan_threads", "apply_torch_threads", "single_thread_pools_for_children",
           "threads_in_effect"]

#: Environment variables that size OpenMP/BLAS pools at import time in a child process.
_POOL_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class ThreadPlan:
    """Threads one MD process uses.

    Attributes
    ----------
    openmm : int
        Threads of OpenMM's CPU platform (``Threads`` property); ignored by the other platforms.
    torch_intra_op : int
        ``torch.set_num_threads`` of the process.
    torch_inter_op : int
        ``torch.set_num_interop_threads`` of the process.
    """

    openmm: int
    torch_intra_op: int = 1
    torch_inter_op: int = 1


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity; a container or ``taskset`` limit is respected)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def plan_threads(threads: Optional[int] = None, processes: int = 1) -> ThreadPlan:
    """Thread plan of each of ``processes`` concurrent MD processes sharing ``threads`` cores.

    Parameters
    ----------
    threads
        Cores the whole run may use (``execution.threads``); None: :func:`available_cores`.
    processes
        MD processes running at the same time (concurrent walkers); each gets ``threads // processes`` OpenMM
        threads, at least one.

    Raises
    ------
    ValueError
        If ``threads`` or ``processes`` is below 1.
    """
    if threads is not None and int(threads) < 1:
        raise ValueError(f"execution.threads must be >= 1 (got {threads})")
    if int(processes) < 1:
        raise ValueError(f"processes must be >= 1 (got {processes})")
    total = available_cores() if threads is None else int(threads)
    return ThreadPlan(openmm=max(1, total // int(processes)))


def apply_torch_threads(plan: Optional[ThreadPlan] = None) -> None:
    """Set torch's pools of this process to ``plan`` (default: one intra-op and one inter-op thread).

    The inter-op pool can only be sized before torch first uses it; a later call keeps the size it has.
    """
    import torch

    plan = plan or ThreadPlan(openmm=1)
    if torch.get_num_threads() != plan.torch_intra_op:
        torch.set_num_threads(plan.torch_intra_op)
    if torch.get_num_interop_threads() != plan.torch_inter_op:
        try:
            torch.set_num_interop_threads(plan.torch_inter_op)
        except RuntimeError:  # already started: it only serves torch.jit.fork, which the package does not use
            pass


@contextlib.contextmanager
def single_thread_pools_for_children() -> Iterator[None]:
    """Within the block, processes spawned from this one start with OpenMP/BLAS pools of one thread.

    A spawned interpreter sizes those pools at import, before it can apply its own plan; a value the user set
    in the environment is kept. The environment is restored on exit.
    """
    added = [name for name in _POOL_ENV if name not in os.environ]
    for name in added:
        os.environ[name] = "1"
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def threads_in_effect(context=None) -> Dict[str, object]:
    """The thread counts this process actually runs with (for ``run.json`` and tests).

    Parameters
    ----------
    context : openmm.Context, optional
        When given, its platform and, on the CPU platform, its ``Threads`` property as OpenMM reports it.
    """
    import torch

    out: Dict[str, object] = {"torch_intra_op": torch.get_num_threads(),
                              "torch_inter_op": torch.get_num_interop_threads(),
                              "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS")}
    if context is not None:
        platform = context.getPlatform()
        out["platform"] = platform.getName()
        if platform.getName() == "CPU":
            out["openmm"] = int(platform.getPropertyValue(context, "Threads"))
    return out
