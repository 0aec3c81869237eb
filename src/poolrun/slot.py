"""A worker's slot: a few doubles in memory shared with the supervisor, one slot per worker.

The worker writes which batch and which item it is running, and since when; the supervisor
reads them to blame the right item when the worker dies, to enforce per-item timeouts and
``start_timeout``, and to know how far a batch has got. No message is sent for any of it.
"""

SLOT_BATCH, SLOT_POS, SLOT_STARTED = 0, 1, 2
SLOT_SIZE = 3
SLOT_BYTES = SLOT_SIZE * 8
IDLE = -1.0
# While a worker is not ready, its slot's position says why, since SLOT_STARTED, so that the
# supervisor can enforce ``start_timeout``: the supervisor writes STARTING when it starts the
# worker; the worker writes LOADING (and the function's id as the batch) while it loads one.
STARTING, LOADING = -2.0, -3.0
