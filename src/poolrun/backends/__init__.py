"""Where batches run. The supervisor talks to a backend only through the interface in
:mod:`poolrun.backends.base`; ``local`` runs worker processes on this machine, ``dask`` runs the
same batches as tasks on a Dask distributed cluster."""
