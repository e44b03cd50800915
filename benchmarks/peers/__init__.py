"""The peers of ``make bench``: the same work as the pipeline written the way a team would
with another framework (plain Faust, Quix Streams), measured beside it in the same run.
The work they share (decode, validate, key, the rows) is :mod:`benchmarks.peers.work`."""
