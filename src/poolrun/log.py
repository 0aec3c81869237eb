"""poolrun's logger: loguru, quiet by default.

A library must not reconfigure its host application's loguru handlers, so instead of adding
handlers poolrun filters at the source: messages below ``POOLRUN_LOG`` (default ``warning``)
are never emitted. ``POOLRUN_LOG=debug`` shows worker starts, deaths, recycling and batch
sizing decisions.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from typing import Any

_LEVELS = {"trace": 5, "debug": 10, "info": 20, "success": 25, "warning": 30, "error": 40}


def _threshold() -> int:
    name = os.environ.get("POOLRUN_LOG", "warning").strip().lower()
    return _LEVELS.get(name, 30)


_THRESHOLD = _threshold()


def _logger() -> Any:
    """loguru, imported when the first message is emitted (most runs emit none)."""
    from loguru import logger

    return logger.bind(component="poolrun").opt(depth=1)


def debug(message: str, *args: Any) -> None:
    if _THRESHOLD <= 10:
        _logger().debug(message, *args)


def info(message: str, *args: Any) -> None:
    if _THRESHOLD <= 20:
        _logger().info(message, *args)


def warning(message: str, *args: Any) -> None:
    if _THRESHOLD <= 30:
        _logger().warning(message, *args)


def debug_traceback(message: str) -> None:
    """The exception being handled, with its traceback, at debug level (quiet by default:
    the command line prints one line, and this is where the rest goes)."""
    if _THRESHOLD <= 10:
        from loguru import logger

        logger.bind(component="poolrun").opt(exception=True, depth=1).debug(message)
