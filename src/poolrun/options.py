"""Validated run options.

Every entry point (decorator, ``map``/``imap``, ``Pool``, the CLI) funnels its keyword
arguments through :func:`make_options`, so a bad value fails the same way everywhere: a
``ValueError``/``TypeError`` that names the option and what it accepts, raised before any
process starts.
"""

from __future__ import annotations

import os
from collections import namedtuple

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from typing import Any

_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "K": 1024,
    "M": 1024**2,
    "G": 1024**3,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}
_SIZE_PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$"


# An empty worker holds about 10 MB of its own (private) memory; a limit below this could
# never be met, and every item would fail as a memory kill.
MIN_MAX_RSS = 32 * 1024**2


def parse_size(value: int | float | str | None, name: str = "max_rss") -> int | None:
    """Turn ``"1GB"``, ``"512MiB"`` or a byte count into bytes (``None`` stays ``None``)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a size like '1GB', '512MiB' or a byte count, not a bool")
    if isinstance(value, int | float):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
        return int(value)
    if not isinstance(value, str):
        raise TypeError(
            f"{name} must be a size like '1GB', '512MiB' or a byte count, not {value!r}"
        )
    import re  # only a size given as text needs it, and it costs the first call ~3 ms

    match = re.match(_SIZE_PATTERN, value)
    unit = match.group(2).upper() if match else None
    if not match or unit not in _SIZE_UNITS:
        raise ValueError(
            f"{name}={value!r} is not a size: use a number with an optional unit "
            "(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. '1GB' or '512MiB'"
        )
    size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if size <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return size


def available_cpus() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def parse_max_failures(value: int | float | str | None) -> int | float | None:
    """``10`` (a count), ``0.05`` or ``"5%"`` (a fraction of the items seen so far)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("max_failures must be a count (int), a fraction (float <= 1) or 'P%'")
    if isinstance(value, str):
        text = value.strip()
        try:
            if text.endswith("%"):
                number = float(text[:-1]) / 100.0
                if not 0 <= number <= 1:
                    raise ValueError
                return number
            try:
                return parse_max_failures(int(text))
            except ValueError:
                return parse_max_failures(float(text))
        except ValueError:
            raise ValueError(
                f"max_failures={value!r} is not a count like '10', a fraction like '0.05' "
                "or a percentage like '5%'"
            ) from None
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"max_failures must be >= 0, got {value}")
        return value
    if isinstance(value, float):  # a fraction: 0.05 means the same as "5%"
        if not 0 <= value <= 1:
            raise ValueError(f"max_failures as a fraction must be in [0, 1], got {value}")
        return value
    raise TypeError(f"max_failures must be an int, a float fraction or 'P%', not {value!r}")


# Every option and its default; see the README for what each one does. (``workers=None``
# means the CPUs this process may use, read when the options are made.)
_DEFAULTS: dict[str, Any] = {
    "workers": None,
    "batch_size": "auto",
    "max_rss": None,
    "timeout": None,
    "retries": 0,
    "retry_on": (Exception,),
    "backoff": 0.1,
    "ordered": True,
    "start_method": "auto",
    "start_timeout": 60.0,
    "progress": False,  # True/"auto", "live", "bar" or False: see monitor.py
    "backend": "local",
    "scheduler": None,
    "max_failures": None,
    "initializer": None,
    "initargs": (),
    "inflight": 2,
    # Each batch costs the supervisor ~0.4 ms of CPU (a wake-up on a core the workers need,
    # with cold caches), plus the worker's own ~0.3 ms: 0.02 spent 2-9 % more of a short run
    # on batch overhead than 0.05, and 0.05 cost 200 items of 20 ms 192 batches and 108 ms of
    # supervisor CPU where 0.1 cost 83 and 43 ms. The balance rule (see ``batching``) still
    # cuts batches down at the tail, so the last ones stay fine.
    "target_batch_seconds": 0.1,
    "max_batch_size": 65536,
    "trace_items": False,
    "checkpoint": None,  # a SQLite file: see poolrun.durable
    "retry_failed": True,  # with checkpoint=: run the failed items of a past run again
    "rate": None,  # items started per second ("50/s", "300/min" when given)
}


class Options(namedtuple("Options", _DEFAULTS, defaults=_DEFAULTS.values())):
    """Everything a run can be tuned with: immutable, made by :func:`make_options`.

    A named tuple rather than a frozen dataclass: the same immutable record with
    ``_replace``, at a twentieth of the cost to define on the first call's import path."""

    __slots__ = ()

    def with_changes(self, **changes: Any) -> Options:
        return make_options(self, **changes)


def make_options(base: Options | None = None, **kwargs: Any) -> Options:
    """Validate ``kwargs`` over ``base`` (or the defaults) and return a new :class:`Options`."""
    unknown = sorted(set(kwargs) - set(_DEFAULTS))
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_DEFAULTS))}"
        )
    values = {k: v for k, v in kwargs.items() if not (k == "workers" and v is None)}
    opts = (base or Options())._replace(**values)
    if opts.workers is None:
        opts = opts._replace(workers=available_cpus())
    return _validated(opts)


def _validated(o: Options) -> Options:
    _check_int("workers", o.workers, minimum=1)
    if o.batch_size != "auto":
        if isinstance(o.batch_size, str) and o.batch_size.isdigit():
            o = o._replace(batch_size=int(o.batch_size))
        else:
            _check_int("batch_size", o.batch_size, minimum=1, allowed="'auto' or an int >= 1")
    o = o._replace(max_rss=parse_size(o.max_rss), max_failures=parse_max_failures(o.max_failures))
    if o.max_rss is not None and o.max_rss < MIN_MAX_RSS:
        raise ValueError(
            f"max_rss={o.max_rss} bytes is less than an empty worker needs "
            f"(at least {MIN_MAX_RSS // 1024**2} MiB); use a size like '512MB'"
        )
    _check_positive("start_timeout", o.start_timeout)
    if o.timeout is not None:
        _check_positive("timeout", o.timeout)
    _check_int("retries", o.retries, minimum=0)
    if isinstance(o.retry_on, type):
        o = o._replace(retry_on=(o.retry_on,))
    if not (
        isinstance(o.retry_on, tuple)
        and all(isinstance(t, type) and issubclass(t, BaseException) for t in o.retry_on)
    ):
        raise TypeError(
            f"retry_on must be an exception class or a tuple of them, not {o.retry_on!r}"
        )
    if not isinstance(o.backoff, int | float) or isinstance(o.backoff, bool) or o.backoff < 0:
        raise ValueError(f"backoff must be a number of seconds >= 0, not {o.backoff!r}")
    if o.start_method != "auto":  # multiprocessing is not imported unless it starts workers
        import multiprocessing

        methods = ["auto", *multiprocessing.get_all_start_methods()]
        if o.start_method not in methods:
            raise ValueError(f"start_method={o.start_method!r}; allowed: {', '.join(methods)}")
    if o.backend not in ("local", "dask"):
        raise ValueError(f"backend={o.backend!r}; allowed: 'local', 'dask'")
    if o.scheduler is not None and o.backend != "dask":
        raise ValueError("scheduler= only applies to backend='dask'")
    if o.initializer is not None and not callable(o.initializer):
        raise TypeError(f"initializer must be callable, not {o.initializer!r}")
    if not isinstance(o.initargs, tuple):
        o = o._replace(initargs=tuple(o.initargs))
    _check_int("inflight", o.inflight, minimum=1)
    _check_positive("target_batch_seconds", o.target_batch_seconds)
    _check_int("max_batch_size", o.max_batch_size, minimum=1)
    if not (isinstance(o.progress, bool) or o.progress in ("auto", "live", "bar")):
        kind = ValueError if isinstance(o.progress, str) else TypeError
        raise kind(f"progress must be True, False, 'auto', 'live' or 'bar', not {o.progress!r}")
    if o.rate is not None:
        from .ratelimit import parse_rate

        o = o._replace(rate=parse_rate(o.rate))
    if o.checkpoint is not None and not isinstance(o.checkpoint, str | os.PathLike):
        raise TypeError(f"checkpoint must be a file path, not {o.checkpoint!r}")
    for flag in ("ordered", "trace_items", "retry_failed"):
        if not isinstance(getattr(o, flag), bool):
            raise TypeError(f"{flag} must be True or False, not {getattr(o, flag)!r}")
    return o


def _check_int(name: str, value: Any, minimum: int, allowed: str | None = None) -> None:
    allowed = allowed or f"an int >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {allowed}, not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds > 0, not {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
