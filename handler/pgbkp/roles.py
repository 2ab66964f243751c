"""The roles of a globals dump (``pg_dumpall --globals-only``) on their way to a server that has some.

A server always has at least the role a restore logs in as, and a live target has more: pg_dumpall
writes ``CREATE ROLE name;`` then ``ALTER ROLE name WITH ...`` for every role, and one CREATE of a role
that exists fails the whole transaction. :class:`RoleFilter` leaves such a role exactly as it is on the
target: its ``CREATE ROLE``, ``ALTER ROLE`` (attributes, password, settings) and ``COMMENT ON ROLE``
lines are not sent (each becomes a blank line, so line numbers still match the dump). Memberships
(``GRANT a TO b``) are sent: they only add.

The filter works on whole lines as pg_dumpall writes them (one statement per line). A role whose quoted
name holds a line break is not recognised: its CREATE is sent, and on a target that has it, fails the
restore, which then commits nothing. Pure: bytes in, bytes out.
"""

from __future__ import annotations

import re
from collections.abc import Collection

_IDENT = rb'("(?:[^"\n]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_CREATE = re.compile(rb"CREATE ROLE " + _IDENT + rb";\n")
_ABOUT = re.compile(rb"(?:ALTER ROLE |COMMENT ON ROLE )" + _IDENT + rb" ")


def role_name(ident: bytes) -> str:
    """The name an identifier as pg_dumpall writes it stands for (quotes removed, doubled ones undone)."""
    text = ident.decode("utf-8", "replace")
    if text.startswith('"'):
        return text[1:-1].replace('""', '"')
    return text


class RoleFilter:
    """Drop the lines of the roles that exist on the target (see the module's docstring).

    ``existing``: the target's roles. ``skip_existing`` False: a role of the dump that exists (other than
    ``login``, the role the restore runs as, which always exists) is a conflict, listed in
    :attr:`conflicts` for the caller to refuse the restore with; its lines are dropped meanwhile, so the
    whole dump is read and every conflict named at once. :attr:`skipped` lists the roles left as they
    were, :attr:`created` the ones the dump creates."""

    def __init__(self, existing: Collection[str], login: str, *, skip_existing: bool) -> None:
        self._existing = frozenset(existing)
        self._login = login
        self._skip = skip_existing
        self._carry = b""
        self._dropped: set[str] = set()
        self.skipped: list[str] = []
        self.conflicts: list[str] = []
        self.created: list[str] = []

    def feed(self, chunk: bytes) -> bytes:
        data = self._carry + chunk
        cut = data.rfind(b"\n") + 1
        self._carry = data[cut:]
        return b"".join(self._line(line) for line in data[:cut].splitlines(keepends=True))

    def flush(self) -> bytes:
        rest, self._carry = self._carry, b""
        return self._line(rest) if rest else b""

    def _line(self, line: bytes) -> bytes:
        create = _CREATE.fullmatch(line)
        if create:
            name = role_name(create[1])
            if name not in self._existing:
                self.created.append(name)
                return line
            self._dropped.add(name)
            (self.skipped if self._skip or name == self._login else self.conflicts).append(name)
            return b"\n"
        about = _ABOUT.match(line)
        if about and role_name(about[1]) in self._dropped:
            return b"\n"
        return line
