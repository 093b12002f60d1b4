"""Where the loop's eABF walkers run: Dask workers of an embedded local cluster, a running scheduler or batch jobs.

The ``execution`` section of the configuration picks the cluster (:func:`walker_client`):

* default: a :class:`distributed.LocalCluster` started by the driver for the MD stage of an iteration (no server to
  install or run): one worker process per walker slot (``min(loop.walkers, loop.walker_processes)``), one Dask
  thread each; the walkers share ``execution.threads`` cores (:func:`aesample.threads.plan_threads`), torch runs
  one thread per walker and the worker processes start with OpenMP/BLAS pools of one thread;
* ``execution.scheduler: tcp://host:8786``: the workers of a running cluster;
* ``execution.jobqueue: {kind: slurm, cores: 8, memory: 16GB, gpus_per_job: 1, ...}``: batch jobs submitted by the
  driver through dask-jobqueue (the extra ``aesample[cluster]``), each with ``walkers_per_job`` workers.

Example (SLURM, one GPU per walker, the run directory on a shared file system)::

    loop: {walkers: 4}
    execution:
      jobqueue: {kind: slurm, cores: 4, memory: 8GB, gpus_per_job: 1, walltime: "04:00:00", queue: gpu,
                 account: myproject, job_script_prologue: ["source ~/aesample-env/bin/activate"]}

Walker tasks are idempotent (:func:`run_tasks`): a task resumes its walker from that walker's last checkpoint in
the run directory, which is the only place a walker's progress lives. A worker lost mid-walker (killed, pre-empted,
out of walltime) costs at most one MD segment: the scheduler runs the task again on another worker (up to
``execution.retries`` times), and the new task truncates COLVAR to the checkpoint and continues from it. The
driver's own crash is covered by ``aesample resume``; local workers die with the driver.

GPUs: each worker uses one GPU as its OpenMM ``DeviceIndex`` (:func:`worker_gpu_index`): worker ``i`` of a job or
of the local cluster takes GPU ``i`` modulo the GPUs it sees (``CUDA_VISIBLE_DEVICES``, which batch systems set per
job; else the devices torch counts). With as many worker slots as GPUs that is one walker per GPU. Known limit:
when the driver dies while a remote cluster keeps running a walker task, a resumed driver may start the same
walker again while the old task still writes; stop the old workers (or wait for them) before resuming.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from .config import ExecutionConfig, JobqueueConfig
from .threads import single_thread_pools_for_children

__all__ = ["WALKER_RESOURCE", "walker_client", "jobqueue_cluster_kwargs", "make_jobqueue_cluster", "run_tasks",
           "visible_gpu_count", "worker_gpu_index", "worker_platform_properties", "walker_slots"]

log = logging.getLogger("aesample")

#: Dask worker resource that admits one walker at a time per worker (a walker is one MD process).
WALKER_RESOURCE = "walker"

#: Batch-system directive asking for ``n`` GPUs per job (PBS asks in its resource_spec instead).
_GPU_DIRECTIVE = {"slurm": "--gres=gpu:{n}", "lsf": '-gpu "num={n}"'}


def walker_slots(walkers: int, walker_processes: Optional[int]) -> int:
    """Walkers that run at once: ``min(walkers, walker_processes)`` (``walker_processes`` None: all of them)."""
    return max(1, min(int(walkers), int(walker_processes or walkers)))


def _missing_jobqueue() -> ImportError:
    return ImportError("execution.jobqueue needs dask-jobqueue, which is not installed: install the extra "
                       "with  pip install 'aesample[cluster]'  (or pip install dask-jobqueue)")


def jobqueue_cluster_kwargs(spec: JobqueueConfig) -> Dict[str, Any]:
    """Keyword arguments of dask-jobqueue's cluster class for ``spec`` (pure: nothing is imported or submitted).

    Every worker gets the resource ``walker=1`` (one walker at a time); the GPUs per job are asked for with the
    batch system's directive.
    """
    workers = spec.workers_per_job
    extra = list(spec.job_extra_directives)
    kwargs: Dict[str, Any] = {
        "cores": spec.cores, "memory": spec.memory, "processes": workers,
        "python": spec.python or sys.executable,
        "worker_extra_args": ["--resources", f"{WALKER_RESOURCE}=1"],
        "job_script_prologue": list(spec.job_script_prologue),
    }
    if spec.gpus_per_job:
        if spec.kind == "pbs":
            mem = spec.memory.lower().replace("ib", "b")
            kwargs["resource_spec"] = f"select=1:ncpus={spec.cores}:ngpus={spec.gpus_per_job}:mem={mem}"
        else:
            extra.append(_GPU_DIRECTIVE[spec.kind].format(n=spec.gpus_per_job))
    kwargs["job_extra_directives"] = extra
    for name in ("walltime", "queue", "account", "interface", "local_directory"):
        value = getattr(spec, name)
        if value is not None:
            kwargs["project" if (name, spec.kind) == ("account", "lsf") else name] = value  # LSF: -P project
    kwargs["scheduler_options"] = {"dashboard_address": ":0"}  # any free port: several runs may share a login node
    return kwargs


def make_jobqueue_cluster(spec: JobqueueConfig):
    """The dask-jobqueue cluster object of ``spec`` (no job submitted until it is scaled).

    Raises
    ------
    ImportError
        Naming the extra ``aesample[cluster]`` when dask-jobqueue is not installed.
    """
    try:
        import dask_jobqueue
    except ImportError:
        raise _missing_jobqueue() from None
    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster,
           "lsf": dask_jobqueue.LSFCluster}[spec.kind]
    return cls(**jobqueue_cluster_kwargs(spec))


@contextlib.contextmanager
def walker_client(execution: ExecutionConfig, slots: int) -> Iterator[Any]:
    """A :class:`distributed.Client` whose workers run the walkers, for the duration of the block.

    Parameters
    ----------
    execution
        The ``execution`` section: ``scheduler`` (connect), ``jobqueue`` (submit ``ceil(slots / walkers_per_job)``
        jobs unless ``jobs`` says otherwise) or neither (a local cluster of ``slots`` worker processes).
    slots
        Walkers that run at once.

    The local cluster and the jobqueue cluster are closed on exit; a scheduler given by address is only
    disconnected from. OpenMP/BLAS pools of the local workers (and of workers the nanny restarts) have one thread.
    """
    import dask
    from distributed import Client, LocalCluster

    retries = {"distributed.scheduler.allowed-failures": int(execution.retries)}  # the embedded scheduler's
    with single_thread_pools_for_children(), dask.config.set(retries):
        if execution.scheduler is not None:
            client = Client(execution.scheduler, set_as_default=False)
            try:
                yield client
            finally:
                client.close()
            return
        if execution.jobqueue is not None:
            cluster = make_jobqueue_cluster(execution.jobqueue)
            spec = execution.jobqueue
            cluster.scale(jobs=spec.jobs or -(-int(slots) // spec.workers_per_job))
        else:
            cluster = LocalCluster(n_workers=int(slots), threads_per_worker=1, processes=True,
                                   dashboard_address=None, resources={WALKER_RESOURCE: 1},
                                   silence_logs=logging.ERROR)
        try:
            client = Client(cluster, set_as_default=False)
            try:
                yield client
            finally:
                client.close()
        finally:
            cluster.close()


def _every_worker_has_walker_resource(client) -> bool:
    workers = client.scheduler_info().get("workers", {})
    return bool(workers) and all(WALKER_RESOURCE in (w.get("resources") or {}) for w in workers.values())


def _slug(label: str) -> str:
    """A task key part from a label: its text before any " (", runs of other characters than [A-Za-z0-9_.] as "-"."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", label.split(" (")[0]).strip("-")


def run_tasks(client, fn: Callable, calls: Sequence[tuple], labels: Sequence[str], retries: int = 3) -> List[Any]:
    """Run ``fn(*args)`` for every ``args`` of ``calls`` on the client's workers and wait for all of them.

    ``fn`` must be idempotent (a walker task resumes from its checkpoint): a task that raises is run again up to
    ``retries`` times, and one whose worker is lost is rescheduled by the scheduler. Task keys are
    ``aesample-<label slug>-<token>`` (e.g. ``aesample-iteration-1-eABF-walker-0-1a2b3c4d``). Every task is waited for
    before the first failure is raised as a RuntimeError naming its label (the others keep their checkpoints).
    Workers that advertise the resource :data:`WALKER_RESOURCE` (the local and jobqueue clusters) run one task
    at a time; those of an external scheduler without it run as many as they have threads.
    """
    resources = {WALKER_RESOURCE: 1} if _every_worker_has_walker_resource(client) else None
    token = uuid.uuid4().hex[:8]  # fresh keys: a long-lived scheduler never hands back an old result
    futures = [client.submit(fn, *args, key=f"aesample-{_slug(label)}-{token}", pure=False, retries=int(retries),
                             resources=resources)
               for args, label in zip(calls, labels)]
    results, errors = [], []
    for label, fut in zip(labels, futures):  # all submitted: waiting for them in turn waits for every one
        try:
            results.append(fut.result())
        except Exception as exc:  # noqa: BLE001 - reported below with the task's label
            errors.append((label, exc))
            results.append(None)
    for fut in futures:
        fut.release()
    if errors:
        label, exc = errors[0]
        others = f" ({len(errors) - 1} more failed too)" if len(errors) > 1 else ""
        raise RuntimeError(f"{label} failed: {type(exc).__name__}: {exc}{others}") from exc
    return results


# ------------------------------------------------------------------------------------------------ GPUs
def visible_gpu_count() -> int:
    """GPUs this process may use: the entries of ``CUDA_VISIBLE_DEVICES`` when set, else torch's device count."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"])
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # noqa: BLE001 - no usable CUDA runtime: no GPU
        return 0


def worker_gpu_index(worker_name: Any, n_gpus: int) -> int:
    """The GPU (index among the visible ones) of the worker named ``worker_name``.

    Local-cluster workers are named 0, 1, ...; a dask-jobqueue job's workers ``<job>-<i>`` (``i``: the worker's
    index in its job when a job runs several). The trailing integer of the name, modulo ``n_gpus``; 0 for a name
    without one.

    Raises
    ------
    ValueError
        If ``n_gpus`` < 1.
    """
    if int(n_gpus) < 1:
        raise ValueError(f"no GPU to choose from (n_gpus={n_gpus})")
    match = re.search(r"(\d+)$", str(worker_name)) if worker_name is not None else None
    return int(match.group(1)) % int(n_gpus) if match else 0


def worker_platform_properties(platform: str, n_atoms: int, precision: str = "auto") -> Dict[str, str]:
    """OpenMM platform properties of a walker on this Dask worker: ``{"DeviceIndex": ...}`` when the platform the
    walker will use (:func:`aesample.platforms.select_platform` of ``platform``) is CUDA or OpenCL and this process
    runs in a Dask worker, else ``{}`` (CPU, Reference, or outside Dask)."""
    from .platforms import select_platform

    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):  # not inside a Dask worker
        return {}
    chosen, _ = select_platform(platform, n_atoms, precision)
    n = visible_gpu_count()
    if chosen.getName() not in ("CUDA", "OpenCL") or n < 1:
        return {}
    return {"DeviceIndex": str(worker_gpu_index(name, n))}
