"""poolrun: run a CPU-bound function over a large input on long-lived worker processes.

>>> import poolrun
>>> run = poolrun.map(str.upper, ["a", "b"], workers=2)
>>> run.values
['A', 'B']

The public names are loaded on first use (PEP 562), so a worker process, which imports only
``poolrun.worker``, does not pay for the supervisor, the CLI or the report.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from typing import Any

    from .aio import aimap, amap
    from .api import Pool, PoolClosed, Task, imap, map, starmap, task
    from .backends.base import SetupFailed
    from .durable.queue import Queue
    from .durable.sqlite import DatabaseLocked
    from .executor import Executor, TaskFailed
    from .report import Report
    from .results import ItemError, ItemResult, ItemsFailed, Run, RunAborted
    from .trace import Trace

_WHERE = {
    "Pool": "api",
    "PoolClosed": "api",
    "Task": "api",
    "imap": "api",
    "map": "api",
    "starmap": "api",
    "amap": "aio",
    "aimap": "aio",
    "task": "api",
    "SetupFailed": "backends.base",
    "Queue": "durable.queue",
    "DatabaseLocked": "durable.sqlite",
    "Executor": "executor",
    "TaskFailed": "executor",
    "Report": "report",
    "ItemError": "results",
    "ItemResult": "results",
    "ItemsFailed": "results",
    "Run": "results",
    "RunAborted": "results",
    "Trace": "trace",
}
__all__ = [
    "DatabaseLocked",
    "Executor",
    "ItemError",
    "ItemResult",
    "ItemsFailed",
    "Pool",
    "PoolClosed",
    "Queue",
    "Report",
    "Run",
    "RunAborted",
    "SetupFailed",
    "Task",
    "TaskFailed",
    "Trace",
    "aimap",
    "amap",
    "imap",
    "map",
    "starmap",
    "task",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'poolrun' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
