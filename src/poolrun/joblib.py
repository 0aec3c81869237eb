"""A joblib parallel backend on poolrun workers: scikit-learn's ``n_jobs=`` on poolrun.

>>> import joblib, poolrun.joblib
>>> poolrun.joblib.register()
>>> with joblib.parallel_config(backend="poolrun", n_jobs=4, timeout=60):
...     scores = cross_val_score(model, X, y, cv=5)        # doctest: +SKIP

Parameters given to ``parallel_config`` besides joblib's own (``timeout``, ``max_rss``,
``retries``, ...) are poolrun options. Each joblib batch (``BatchedCalls``) is one
:class:`~poolrun.Executor` submission, which poolrun's batcher groups again when they are
small. poolrun sizes joblib's batches: its workers time each batch themselves, so after the
first one the size goes straight to ``target_batch_seconds`` of work (50 ms unless given:
joblib hands tasks over one batch at a time, so unlike ``map`` poolrun cannot cut the last
batches small, and a shorter batch is a shorter wait at the end).
joblib's own auto-batching times a batch from dispatch to completion, round trip included,
and can only double the size a step, so a call of small tasks spent most of its start in
batches of 1, 2, 4... tasks, a round trip each. While joblib batches are measured short
(under 20 ms), the next one waits in a busy worker's queue, hiding the round trip; longer
ones go to whichever worker frees first, as loky's shared queue gives them.

Workers limit their BLAS/OpenMP threads as loky's do (``cpu_count() // n_jobs``, or
``inner_max_num_threads``). A task whose worker crashes, times out or passes ``max_rss``
fails with :class:`~poolrun.TaskFailed` saying why; joblib raises it from ``Parallel``.

As loky does, the backend keeps its workers between ``Parallel`` calls (one set per
``n_jobs`` and options), so a program's second call does not pay for starting them again:
they stop at exit, or at :func:`shutdown`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import cloudpickle

try:
    from joblib import register_parallel_backend
    from joblib._parallel_backends import (
        AutoBatchingMixin,
        FallbackToBackend,
        ParallelBackendBase,
        SequentialBackend,
    )
    from joblib.parallel import cpu_count
except ImportError as exc:  # pragma: no cover - joblib is an optional dependency
    raise ImportError(f"poolrun.joblib needs joblib >= 1.5 (pip install joblib): {exc}") from None

from .executor import Executor
from .options import make_options

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from concurrent.futures import Future
    from typing import Any

NAME = "poolrun"
JOBLIB_BATCH_SECONDS = 0.05  # a joblib batch's work, unless target_batch_seconds= says


def register(name: str = NAME) -> None:
    """Make ``joblib.parallel_config(backend="poolrun")`` (or ``name``) use poolrun."""
    register_parallel_backend(name, PoolrunBackend)


_kept: dict[tuple[int, str], Executor] = {}  # by (n_jobs, options): reused across calls
_kept_lock = threading.Lock()


def shutdown() -> None:
    """Stop the workers the backend keeps between ``Parallel`` calls."""
    with _kept_lock:
        executors = list(_kept.values())
        _kept.clear()
    for executor in executors:
        executor.shutdown(wait=True)


def _executor(n_jobs: int, options: dict[str, Any]) -> Executor:
    """The kept executor for ``n_jobs`` and ``options``, started if there is none."""
    key = (n_jobs, repr(sorted(options.items(), key=lambda kv: kv[0])))
    with _kept_lock:
        executor = _kept.get(key)
        if executor is None or executor._feed.closed:  # none yet, or aborted
            executor = _kept[key] = Executor(max_workers=n_jobs, **options)
        return executor


def run_pickled(payload: bytes) -> tuple[Any, float]:
    """In a worker: a joblib batch, cloudpickled as loky does (lambdas and functions of
    ``__main__`` work); returns its results and the seconds per task it took."""
    batch = cloudpickle.loads(payload)
    started = time.perf_counter()
    results = batch()
    return results, (time.perf_counter() - started) / max(len(batch), 1)


def _limit_threads(
    env: tuple[tuple[str, str], ...], init: Callable[..., Any] | None, args: tuple
) -> None:
    """Worker initializer: the thread limits joblib asks for, then the user's initializer."""
    os.environ.update(env)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=int(os.environ["OMP_NUM_THREADS"]))
    if init is not None:
        init(*args)


class PoolrunBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's backend interface (joblib >= 1.5: ``submit`` and a result callback)."""

    supports_retrieve_callback = True
    supports_inner_max_num_threads = True

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        for fixed in ("workers", "ordered"):
            if fixed in options:
                raise TypeError(f"{fixed}= is joblib's to set here (n_jobs=), not an option")
        opts = make_options(**options)  # a bad option fails in parallel_config, not Parallel
        self.options = options
        self._executor: Executor | None = None
        given = "target_batch_seconds" in options
        self._batch_seconds = opts.target_batch_seconds if given else JOBLIB_BATCH_SECONDS
        self._task_seconds: float | None = None  # measured in the workers, smoothed

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            return max(cpu_count() + 1 + n_jobs, 1)
        return n_jobs

    def configure(
        self,
        n_jobs: int = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **joblib_kwargs: Any,  # loky's (max_nbytes, mmap_mode, ...): no meaning here
    ) -> int:
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self.parallel = parallel
        init = (
            tuple(sorted(self._prepare_worker_env(n_jobs).items())),
            self.options.get("initializer"),
            tuple(self.options.get("initargs", ())),
        )
        options = {**self.options, "initializer": _limit_threads, "initargs": init}
        self._executor = _executor(n_jobs, options)
        return n_jobs

    def submit(self, func: Callable[[], Any], callback: Callable[..., Any] | None = None) -> Future:
        assert self._executor is not None, "submit() before configure()"
        future = self._executor.submit(run_pickled, cloudpickle.dumps(func))
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future: Future) -> Any:
        results, per_task = future.result()
        seen = self._task_seconds
        self._task_seconds = per_task if seen is None else 0.7 * seen + 0.3 * per_task
        return results

    def compute_batch_size(self) -> int:
        """Tasks per joblib batch: ``target_batch_seconds`` of them by the time per task the
        workers measured; joblib's own rule until a first batch has come back."""
        per_task = self._task_seconds
        if per_task is None:
            return super().compute_batch_size()
        self._effective_batch_size = max(1, int(self._batch_seconds / max(per_task, 1e-9)))
        return self._effective_batch_size

    def terminate(self) -> None:
        self._executor = None  # its workers are kept for the next call
        self.reset_batch_stats()
        self._task_seconds = None

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A task failed: drop what is pending, stop what runs (as loky kills its workers);
        the next call starts new workers."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
            executor._pool.terminate()
            executor.shutdown(wait=True)
        if ensure_ready:
            self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel)
