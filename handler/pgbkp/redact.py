"""Secrets that cannot leak: a redacting string type and a process-wide scrubber for text.

Every secret the configuration reads is wrapped in :class:`Secret` and registered here, so that log
handlers and error printers can scrub it (and its percent-encoded form) from any text, whatever path
the text took to get there.
"""

from __future__ import annotations

import threading
import urllib.parse

REDACTED = "**redacted**"

_lock = threading.Lock()
_known: set[str] = set()


class Secret:
    """A string whose repr and str never show the value; call :meth:`reveal` where it is really needed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    def __str__(self) -> str:
        return REDACTED

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def register(value: str) -> None:
    """Remember a secret value so that :func:`redact` scrubs it. Very short values are ignored: they
    would turn ordinary words into noise, and they are not worth hiding."""
    if len(value) < 4:
        return
    forms = {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value, safe="")}
    with _lock:
        _known.update(forms)


def redact(text: str) -> str:
    """Replace every registered secret in ``text``; longest first, so that overlapping values vanish whole."""
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for value in known:
        if value in text:
            text = text.replace(value, REDACTED)
    return text
