"""Durable work: the ``checkpoint=`` store of a call and the :class:`Queue` of jobs, both in
one SQLite file each.

Both plug into a call the same way (see ``api._Call``): they give the engine the items to
run, commit each segment of results the moment it is done (``Call.on_finished``, one
transaction per segment), and turn the engine's segments into what the caller gets back.
"""
