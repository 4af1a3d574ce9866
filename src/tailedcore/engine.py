"""Where a stage's independent tasks run: in this process (``local``) or on a Ray cluster (``ray``).

An engine maps a function over a list of task inputs and returns the results
in input order; the stages (features over image shards, LOF over blocks of
grid locations, coreset shards, memory-bank shards of a search) give it plain
arrays and get plain arrays back, so the result never depends on the engine.
Ray retries a task whose worker died; tasks are pure, so a retry gives the
same result.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits
from tqdm import tqdm

ENGINES = ("local", "ray")
# Set by a test only: a folder; while it holds a file "armed", the first task of a map kills its worker
# once (a file "died" remembers that it did), to show that a retried task changes nothing.
FAULT_FOLDER = "TAILEDCORE_INJECT_WORKER_FAULT"


class LocalEngine:
    """Tasks run one after another in this process."""

    name = "local"
    workers = 1

    def map(self, function: Callable, tasks: Sequence[tuple], progress: str | None = None) -> list:
        """[function(*args) for args in tasks]; ``progress``: the label of a progress bar over the tasks."""
        return [function(*args) for args in tqdm(tasks, desc=progress, disable=progress is None, leave=False)]

    def put(self, value: Any) -> Any:
        return value


def thread_counts() -> dict:
    """This process's thread counts: torch's and each loaded BLAS / OpenMP library's (by API)."""
    np.ones((2, 2), np.float32) @ np.ones((2, 2), np.float32)  # numpy loads its BLAS on first use
    return {"torch": torch.get_num_threads(),
            "pools": {info["user_api"]: info["num_threads"] for info in threadpool_info()}}


@contextmanager
def same_threads(counts: dict) -> Iterator[None]:
    """Run with ``thread_counts()`` of another process: sums (matrix products, distances) are rounded
    differently with other thread counts, and a task must compute what the driver would."""
    torch.set_num_threads(counts["torch"])
    with threadpool_limits(limits=counts["pools"]):
        yield


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which taskset and container cpusets set)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity masks on this system
        return os.cpu_count() or 1


@functools.cache
def fast_bfloat16() -> bool:
    """Whether oneDNN has fast bfloat16 kernels on this CPU (AVX-512 or newer; native with AVX512-BF16 or AMX).
    Elsewhere torch emulates bfloat16 products: measured on an AVX2 CPU, 200x slower than float32."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@contextmanager
def thread_limits(threads: int | None) -> Iterator[int]:
    """Run the block with ``threads`` threads in torch, faiss and every BLAS / OpenMP pool (numpy,
    scikit-learn), restored after; None: torch's count (``torch.set_num_threads``), at most
    ``available_cores()``. Yields the count used.

    Each library otherwise sizes its own pool, torch by the machine's cores, not the ones this process
    may use, and the pools add up to more threads than cores.
    """
    import faiss

    count = threads or min(torch.get_num_threads(), available_cores())
    torch_before, faiss_before = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(count)
    faiss.omp_set_num_threads(count)
    try:
        with threadpool_limits(limits=count):
            yield count
    finally:
        torch.set_num_threads(torch_before)
        faiss.omp_set_num_threads(faiss_before)


def _maybe_die(index: int) -> None:
    """With the fault folder armed, the first task of a map kills its worker once (see FAULT_FOLDER)."""
    folder = os.environ.get(FAULT_FOLDER)
    if folder is None or index != 0:
        return
    marker = os.path.join(folder, "died")
    if os.path.exists(os.path.join(folder, "armed")) and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)  # the worker process dies mid-task, as on a lost node


def _run_task(function: Callable, index: int, counts: dict, *args):
    """One engine task on a Ray worker: ``function(*args)`` with the driver's thread ``counts``."""
    _maybe_die(index)
    with same_threads(counts):
        return function(*args)


class RayEngine:
    """Tasks run as Ray tasks on the cluster at ``address`` (None: a local one, started on first use).

    ``max_retries``: how often Ray reruns a task whose worker died.
    """

    name = "ray"

    def __init__(self, address: str | None = None, max_retries: int = 3):
        try:
            import ray
        except ImportError as error:
            raise RuntimeError("--engine ray needs Ray: pip install 'tailedcore[ray]'") from error
        self._ray = ray
        self.address, self.max_retries = address, max_retries
        self._task = ray.remote(max_retries=max_retries, retry_exceptions=False)(_run_task)
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k == FAULT_FOLDER}})

    @property
    def workers(self) -> int:
        return max(1, int(self._ray.cluster_resources().get("CPU", 1)))

    def put(self, value: Any) -> Any:
        """Store ``value`` once in the object store; tasks given the reference read it without a copy each."""
        return self._ray.put(value)

    def map(self, function: Callable, tasks: Sequence[tuple], progress: str | None = None) -> list:
        """[function(*args) for args in tasks], one Ray task each, run with this process's thread counts;
        object references among args are resolved (no progress bar: the tasks run at once)."""
        counts = thread_counts()
        return self._ray.get([self._task.remote(function, index, counts, *args) for index, args in enumerate(tasks)])


def shard_starts(count: int, batch_size: int, workers: int) -> tuple[list[int], int]:
    """Shards of whole batches for engine tasks, about two per worker: ``count`` items -> (the first item of each
    shard, items per shard)."""
    per_shard = -(-count // (batch_size * 2 * workers)) * batch_size
    return list(range(0, count, per_shard)), per_shard


def make_engine(name: str, address: str | None = None) -> LocalEngine | RayEngine:
    if name == "local":
        return LocalEngine()
    if name == "ray":
        return RayEngine(address)
    raise ValueError(f"engine='{name}': choose from {', '.join(ENGINES)}")


def in_run_threads(method):
    """Decorator: run a method of an object with ``run`` settings (settings.Run) within ``run.threads``."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with thread_limits(self.run.threads):
            return method(self, *args, **kwargs)

    return run
