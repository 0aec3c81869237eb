"""The Dask backend's dealings with the cluster itself, rather than with tasks.

Reaching a scheduler, or starting a ``LocalCluster`` on this machine; waiting for the first
workers and checking that poolrun runs on them; restarting a worker's process through its
nanny. :class:`~poolrun.backends.dask.DaskBackend` decides when; this module knows how, in
Dask's API.
"""

from __future__ import annotations

import logging

import distributed

from .base import SetupFailed
from .dask_task import check_worker, kill_worker_process

START_SECONDS = 30.0  # to reach the scheduler and see a first worker


def local_cluster(workers: int) -> distributed.LocalCluster:
    """One single-threaded worker process per poolrun worker, reachable from here only."""
    return distributed.LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.CRITICAL,
    )


def connect(scheduler: str | None, cluster: distributed.LocalCluster | None) -> distributed.Client:
    """A client of the scheduler at ``scheduler`` or, if that is None, of ``cluster``."""
    if scheduler is not None:
        try:
            return distributed.Client(scheduler, timeout=START_SECONDS, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise SetupFailed(f"cannot reach the Dask scheduler {scheduler}: {exc}") from exc
    return distributed.Client(cluster, direct_to_workers=True, set_as_default=False)


def first_workers(client: distributed.Client, wanted: int) -> list[str]:
    """The workers there now, once the client's membership events are sure to flow.

    Call it after subscribing to them: a first task, submitted after subscribing on the same
    ordered stream, proves the subscription is in force, so no worker can join or leave
    unseen after the snapshot. It also fails early, and clearly, where poolrun is not
    installed on the workers.
    """
    try:
        client.wait_for_workers(wanted, timeout=START_SECONDS)
    except TimeoutError as exc:
        raise SetupFailed(f"no Dask worker joined within {START_SECONDS:.0f} s") from exc
    try:
        client.submit(check_worker, pure=False).result(timeout=START_SECONDS)
    except Exception as exc:
        raise SetupFailed(
            f"poolrun cannot run on the Dask workers (is it installed there?): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return list(client.scheduler_info()["workers"])


def restart_process(client: distributed.Client, address: str) -> bool:
    """Have the worker's nanny start it a new process; False where no nanny watches it."""
    try:
        killed = client.run(kill_worker_process, workers=[address], nanny=True, on_error="ignore")
    except Exception:
        killed = {}
    return bool(killed)
