"""How a worker process is tuned for a long life of batches: glibc's malloc and the thread
pools of native libraries. Called by every kind of worker (local and Dask) when it loads a
function, and warmed once in the fork template so the workers it forks inherit the work.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from typing import Any


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def pin_native_threads(threads: int | None) -> None:
    """Keep BLAS/OpenMP pools to this worker's share of the CPUs (unless the user chose)."""
    if not _pins(threads):
        return
    for name in _THREAD_VARIABLES:
        os.environ[name] = str(threads)
    if _native_pools_loaded():
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)


def prepare_pinning(threads: int | None) -> None:
    """In the process workers fork from: import threadpoolctl once, so that each worker
    does not. Its import takes 7-14 ms, before a worker's first batch, in every worker of
    every call; a module imported here is inherited. Nothing is limited here: the caller's
    own BLAS keeps its threads."""
    if _pins(threads) and _native_pools_loaded():
        import threadpoolctl  # noqa: F401


def _pins(threads: int | None) -> bool:
    return bool(threads) and not any(name in os.environ for name in _THREAD_VARIABLES)


def _native_pools_loaded() -> bool:
    return "numpy" in sys.modules or "scipy" in sys.modules


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
KEEP_FREED_BYTES = 64 * 1024 * 1024
GLIBC_DEFAULT_THRESHOLD = 128 * 1024


def tune_malloc(memory_limited: bool) -> None:
    """Let glibc keep freed memory for reuse instead of handing it back after every item.

    By default glibc serves blocks over 128 KB with fresh ``mmap`` pages and trims the heap
    as soon as its free top passes that, so a function that allocates a few arrays per item
    pays page faults on every call: 200x200 matrix work ran 60% slower in a fresh worker
    than in a long-lived process. A worker is a long-lived process, so it keeps up to 64 MB
    of freed memory (blocks over 16 MB still come and go with ``mmap``), unless the run has a
    ``max_rss``: then memory goes back to the system at once, as the limit expects.
    ``MALLOC_*`` variables set by the user win.
    """
    if any(name.startswith("MALLOC_") for name in os.environ):
        return
    mallopt = _mallopt()
    if mallopt is None:  # not glibc
        return
    keep = GLIBC_DEFAULT_THRESHOLD if memory_limited else KEEP_FREED_BYTES
    mallopt(M_MMAP_THRESHOLD, max(GLIBC_DEFAULT_THRESHOLD, keep // 4))
    mallopt(M_TRIM_THRESHOLD, keep)


_MALLOPT: list[Any] = []


def _mallopt() -> Any:
    """glibc's ``mallopt``, or ``None``: made from ``_ctypes``, the C core of ``ctypes``,
    because ``import ctypes`` costs a fresh worker ~3 ms before its first item and this is
    the one C function poolrun calls."""
    if not _MALLOPT:
        try:
            import _ctypes

            class _Int(_ctypes._SimpleCData):  # type: ignore[name-defined,misc]
                _type_ = "i"

            class _CFunction(_ctypes.CFuncPtr):  # type: ignore[name-defined,misc]
                _flags_ = _ctypes.FUNCFLAG_CDECL
                _restype_ = _Int

            class _Libc:
                _handle = _ctypes.dlopen(None, 0)  # type: ignore[attr-defined]

            _MALLOPT.append(_CFunction(("mallopt", _Libc())))
        except (ImportError, OSError, AttributeError):
            _MALLOPT.append(None)
    return _MALLOPT[0]


def warm_up() -> None:
    """Made once in the fork template, when it is first idle, so the workers it forks later
    inherit it instead of each making it."""
    _mallopt()
