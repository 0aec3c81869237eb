"""JSON Lines in and out, by responsibility:

* :mod:`.reader`: the streaming reader (stdin, ``.gz``) and the background line counter;
* :mod:`.ranges`: byte ranges of a regular file, cut by the supervisor, read by workers;
* :mod:`.codec`: the worker side, decode, call, encode (:class:`LineTask`);
* :mod:`.writers`: output and errors files that count their bytes for the checkpoint;
* :mod:`.errors`: the errors-file record, and reading it back for ``poolrun retry``.
"""

from .codec import INVALID_JSON, InvalidJSON, LineFailure, LineTask, RangeResult, encode
from .errors import error_record, read_errors
from .ranges import Cutter, Range
from .reader import Input, InputError, LineCounter
from .writers import LineWriter

__all__ = [
    "INVALID_JSON",
    "Cutter",
    "Input",
    "InputError",
    "InvalidJSON",
    "LineCounter",
    "LineFailure",
    "LineTask",
    "LineWriter",
    "Range",
    "RangeResult",
    "encode",
    "error_record",
    "read_errors",
]
