"""Shared runtime of the electronic-health-book pipeline: settings, logging, the embedded
broker/database launcher, Kafka client configuration and the ``ehb`` command line.

The data path itself lives beside this package: ``producers`` (facility side) -> Kafka ->
``streams`` (Faust topology) -> ``sinks`` (PostgreSQL, metrics), with ``schemas`` as the
contract every stage shares.
"""

__version__ = "0.1.0"
