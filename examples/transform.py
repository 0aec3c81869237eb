"""The bundled example for ``poolrun run``: summarise one customer record.

    poolrun run examples/transform.py:transform examples/records.jsonl -o out/results.jsonl

Each input line is a record such as
``{"id": 7, "name": "ada lovelace", "country": "gb", "signup": "2023-04-01", "scores": [...]}``.
The result mixes types plain ``json`` cannot write (a dataclass, a ``date``, numpy numbers);
poolrun writes them as JSON. A record without scores raises, which poolrun records in the
errors file while the other lines go on.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np


@dataclass
class Summary:
    id: int
    name: str
    country: str
    signup: dt.date
    mean: np.float64
    best: np.int64
    scores: np.ndarray


def transform(record: dict) -> Summary:
    scores = np.asarray(record["scores"], dtype=np.int64)
    if scores.size == 0:
        raise ValueError(f"record {record['id']} has no scores")
    return Summary(
        id=record["id"],
        name=record["name"].title(),
        country=record["country"].upper(),
        signup=dt.date.fromisoformat(record["signup"]),
        mean=np.round(scores.mean(), 2),
        best=scores.max(),
        scores=np.sort(scores),
    )
