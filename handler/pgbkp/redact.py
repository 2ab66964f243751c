"""Secrets that cannot leak: a redacting string type and a process-wide scrubber for text.

Messages are built from parts that hold no secret; this module is the safety net behind that rule. Every
secret the configuration reads is wrapped in :class:`Secret`, and the long ones are registered here, so
that log handlers and error printers scrub them (and their percent-encoded forms) from any text, whatever
path the text took, a third-party error message included.

Only values of :data:`MIN_SCRUBBED` characters or more are scrubbed. Substring replacement of a short value
garbles ordinary text (a ZIP password ``backup`` turned ``s3://backups/`` into ``s3://**redacted**s/``),
and the commonest short passwords (``postgres``, ``password``, ``changeme``) are also words our messages
use. Ten characters and up are, in practice, never a word or name that a message holds by chance.
"""

from __future__ import annotations

import threading
import urllib.parse

REDACTED = "**redacted**"
#: Shorter values are not scrubbed (see the module's docstring): messages never contain them by construction.
MIN_SCRUBBED = 10

_lock = threading.Lock()
_known: set[str] = set()


class Secret:
    """A string whose repr and str never show the value; call :meth:`reveal` where it is really needed.

    ``scrub=False`` keeps an identifier that travels with a secret (an S3 access key ID) out of the
    scrubber: it is not secret, and scrubbing it would garble names that contain it (``http://minio:9000``)."""

    __slots__ = ("_value",)

    def __init__(self, value: str, *, scrub: bool = True) -> None:
        self._value = value
        if scrub:
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
    """Remember a secret value so that :func:`redact` scrubs it, if it has :data:`MIN_SCRUBBED` characters
    or more: a shorter one would turn ordinary words into noise, so it must simply never reach a message."""
    if len(value) < MIN_SCRUBBED:
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
