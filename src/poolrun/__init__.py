"""poolrun: run a CPU-bound function over a large input on long-lived worker processes.

>>> import poolrun
>>> run = poolrun.map(str.upper, ["a", "b"], workers=2)
>>> run.values
['A', 'B']
"""

from .api import Pool, Task, imap, map, task
from .backends.base import SetupFailed
from .report import Report
from .results import ItemError, ItemResult, ItemsFailed, Run, RunAborted
from .trace import Trace

__all__ = [
    "ItemError",
    "ItemResult",
    "ItemsFailed",
    "Pool",
    "Report",
    "Run",
    "RunAborted",
    "SetupFailed",
    "Task",
    "Trace",
    "imap",
    "map",
    "task",
]
__version__ = "0.1.0"
