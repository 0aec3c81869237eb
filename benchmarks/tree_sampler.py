"""Samples the summed RSS of a process tree until told to stop; run as a helper process.

    python -m benchmarks.tree_sampler SECONDS ROOT_PID [EXCLUDED_PID ...]

prints ``ready`` after its first sample, samples every SECONDS, and when its stdin closes
prints the peak in bytes and exits. It is a process rather than a thread of the benchmark
because a thread would change what is measured (see ``side_by_side.PeakTreeRss``); it
leaves itself and the EXCLUDED_PIDs out of the sum.
"""

from __future__ import annotations

import contextlib
import select
import sys

import psutil


def descendants(root: psutil.Process) -> list[psutil.Process]:
    """All processes below ``root`` now; none once ``root`` itself has exited."""
    try:
        return root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def tree_rss(root: psutil.Process, exclude: frozenset[int] = frozenset()) -> int:
    """Summed RSS of ``root`` and its descendants but ``exclude``; exited ones count 0."""
    total = 0
    for proc in [root, *descendants(root)]:
        if proc.pid not in exclude:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += proc.memory_info().rss
    return total


def main(argv: list[str]) -> None:
    seconds, root = float(argv[0]), psutil.Process(int(argv[1]))
    exclude = frozenset({psutil.Process().pid, *map(int, argv[2:])})
    peak = tree_rss(root, exclude)
    print("ready", flush=True)
    while not select.select([sys.stdin], [], [], seconds)[0]:
        peak = max(peak, tree_rss(root, exclude))
    print(max(peak, tree_rss(root, exclude)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
