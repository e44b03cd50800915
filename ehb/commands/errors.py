"""Errors of the commands; all derive from ``EhbError`` (the CLI prints them in one line)."""

from __future__ import annotations

from schemas.errors import EhbError

__all__ = ["UnknownTopic", "WaitTimeout"]


class UnknownTopic(EhbError):
    """The topic is neither a logical topic of the pipeline nor a topic on the broker."""


class WaitTimeout(EhbError, TimeoutError):
    """A local deployment did not reach the awaited state in time."""
