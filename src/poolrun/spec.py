"""Load the user's function from a SPEC: ``pkg.module:function`` or ``path/to/file.py:function``.

The CLI resolves a SPEC once in the supervisor, so a typo fails at once with one clear line
(exit 2) before any worker starts; each worker then resolves the same SPEC itself, so the
function is never pickled and a module-level setup (a model, a lookup table) runs per worker.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

FORMS = "'package.module:function' or 'path/to/file.py:function'"


class SpecError(ValueError):
    """A SPEC that cannot be loaded; the message is one line, fit for a terminal."""


def _split(spec: str) -> tuple[str, str]:
    target, _, name = spec.rpartition(":")
    if not target or not name:
        raise SpecError(f"SPEC must be {FORMS}, got {spec!r}")
    return target, name


def _is_path(target: str) -> bool:
    return target.endswith(".py") or os.sep in target


def normalize(spec: str) -> str:
    """Make a file-path SPEC absolute, so it means the same file in every worker."""
    target, name = _split(spec)
    if _is_path(target):
        return f"{Path(target).resolve()}:{name}"
    return spec


@functools.cache
def _load_file(path: str) -> ModuleType:
    """Import a file as a module, once per process (cached by absolute path)."""
    file = Path(path)
    name = file.stem if file.stem not in sys.modules else f"poolrun_spec_{file.stem}"
    module_spec = importlib.util.spec_from_file_location(name, file)
    if module_spec is None or module_spec.loader is None:
        raise SpecError(f"cannot load {path!r} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    # Registered before running it (as ``import`` does) so dataclasses and pickle find it;
    # its folder goes on sys.path, as ``python file.py`` does, so it can import siblings.
    sys.modules[name] = module
    if str(file.parent) not in sys.path:
        sys.path.insert(0, str(file.parent))
    try:
        module_spec.loader.exec_module(module)
    except OSError as exc:
        del sys.modules[name]
        raise SpecError(f"cannot read {path!r}: {exc.strerror or exc}") from None
    except Exception as exc:
        del sys.modules[name]
        raise SpecError(f"importing {path!r} failed: {_one_line(exc)}") from None
    return module


def _import_module(target: str) -> ModuleType:
    """Import ``target``, looking in the working directory first (as ``python -m`` does)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and (target == exc.name or target.startswith(exc.name + ".")):
            raise SpecError(
                f"no module named {target!r} (is it installed, or in the working directory?)"
            ) from None
        raise SpecError(f"importing {target!r} failed: {_one_line(exc)}") from None
    except Exception as exc:
        raise SpecError(f"importing {target!r} failed: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def resolve(spec: str) -> Callable[[Any], Any]:
    """The callable a SPEC names; raises :class:`SpecError` with a one-line reason."""
    target, name = _split(spec)
    if _is_path(target):
        if not Path(target).is_file():
            why = "not a file" if Path(target).exists() else "no such file"
            raise SpecError(f"cannot read {target!r}: {why}")
        module = _load_file(str(Path(target).resolve()))
    else:
        module = _import_module(target)
    found: Any = module
    for part in name.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise SpecError(f"{target!r} has no function {name!r}") from None
    if not callable(found):
        raise SpecError(f"{spec!r} is not callable (it is a {type(found).__name__})")
    return found


class SpecFunction:
    """The function a SPEC names, pickled as the SPEC itself: each worker resolves it once
    (a function loaded from a file path cannot be pickled by reference). ``poolrun queue
    drain`` runs it over the jobs' items."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._fn: Callable[[Any], Any] | None = None

    def __reduce__(self) -> tuple[type[SpecFunction], tuple[str]]:
        return (SpecFunction, (self.spec,))

    def __call__(self, item: Any) -> Any:
        if self._fn is None:
            self._fn = resolve(self.spec)
        return self._fn(item)
