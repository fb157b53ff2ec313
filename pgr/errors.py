"""Errors that stop a service at start or mid-run for a reason outside any record: a broker, an index or a
port that cannot be used. The `pgr` command prints them as one line, never as a traceback."""

from __future__ import annotations


class Unavailable(RuntimeError):
    """Something a stage needs cannot be used; the message names it and what to check."""


class BrokerUnavailable(Unavailable):
    """The Kafka bootstrap servers cannot be reached."""


class IndexUnavailable(Unavailable):
    """The index cannot be opened or written: down, locked by another process, or corrupt."""


class IndexMismatch(Unavailable):
    """The index holds vectors of another dimension than the configured model makes."""


class StorageUnavailable(Unavailable):
    """A disk a service writes to is full, read-only or failing: nothing of the batch was committed."""


class PortInUse(Unavailable):
    """A port this service must listen on is taken."""
