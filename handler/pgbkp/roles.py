"""The roles of a globals dump (``pg_dumpall --globals-only``) on their way to a server that has some.

A server always has at least the role a restore logs in as, and a live target has more: pg_dumpall
writes ``CREATE ROLE name;`` then ``ALTER ROLE name WITH ...`` for every role, and one CREATE of a role
that exists fails the whole transaction. :class:`RoleFilter` leaves such a role exactly as it is on the
target: its ``CREATE ROLE``, ``ALTER ROLE`` (attributes, password, settings), ``COMMENT ON ROLE`` and
``SECURITY LABEL ... ON ROLE`` statements are not sent (each becomes as many blank lines as it had, so
line numbers still match the dump). Memberships (``GRANT a TO b``) are sent: they only add.

It works on whole STATEMENTS, not lines: a role's setting or comment is a string literal that may hold a
line break, and any role may write its own settings (``ALTER ROLE me SET application_name = E'x\\n...'``).
Dropping only a statement's first line would send the rest as SQL of its own, run by the restoring
superuser. So it reads the SQL as the server does: string literals (``'..'``, ``E'..'``), quoted
identifiers and ``--`` comments, and a statement ends at a ``;`` outside them.

Every statement must be one pg_dumpall writes for globals (SET, CREATE/ALTER/COMMENT ON/SECURITY LABEL
of roles and tablespaces, GRANT, REVOKE); anything else (``COMMIT;``, which would commit what came before
and run the rest outside the restore's one transaction, ``CREATE DATABASE``, ``DROP ROLE``, ``SELECT``,
a psql meta-command, dollar quotes or block comments that this reading does not model) raises
:class:`UnexpectedStatementError` before it is sent. Pure: bytes in, bytes out.
"""

from __future__ import annotations

import re
from collections.abc import Collection

_IDENT = rb'("(?:[^"]|"")+"|[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*)'
_END = rb"(?=[\s;])"
_CREATE = re.compile(rb"CREATE\s+ROLE\s+" + _IDENT + _END, re.IGNORECASE)
_ABOUT = re.compile(rb"(?:ALTER\s+ROLE\s+|COMMENT\s+ON\s+ROLE\s+|SECURITY\s+LABEL\s+(?:FOR\s+\S+\s+)?ON\s+ROLE\s+)"
                    + _IDENT + _END, re.IGNORECASE)
#: The statements of a genuine globals dump.
_ALLOWED = re.compile(rb"(?:SET|GRANT|REVOKE|(?:CREATE|ALTER)\s+(?:ROLE|TABLESPACE)|COMMENT\s+ON\s+(?:ROLE|TABLESPACE)"
                      rb"|SECURITY\s+LABEL)\s", re.IGNORECASE)
#: This reading assumes standard strings: pg_dumpall sets it on, and nothing may turn it off.
_STD_STRINGS = re.compile(rb"SET\s+(?:SESSION\s+|LOCAL\s+)?standard_conforming_strings", re.IGNORECASE)
_STD_STRINGS_ON = re.compile(rb"SET\s+standard_conforming_strings\s*(?:=|TO)\s*'?on'?\s*;", re.IGNORECASE)
#: Blank space and ``--`` comment lines before a statement.
_LEAD = re.compile(rb"(?:\s|--[^\n]*(?:\n|\Z))*")
#: Where a statement may end or a quoted part or a comment start (outside quotes).
_STOP = re.compile(rb"[;'\"$\\]|--|/\*")
_IDENT_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_$"
                         + bytes(range(0x80, 0x100)))

_SQL, _STRING, _ESCAPE_STRING, _QUOTED = range(4)


class UnexpectedStatementError(Exception):
    """The globals dump holds something pg_dumpall never writes; ``line`` is where it starts."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


def role_name(ident: bytes) -> str:
    """The name an identifier as pg_dumpall writes it stands for (quotes removed, doubled ones undone;
    an unquoted one folded to lower case, as the server does)."""
    text = ident.decode("utf-8", "replace")
    if text.startswith('"'):
        return text[1:-1].replace('""', '"')
    return text.translate(str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"))


class RoleFilter:
    """Drop the statements of the roles that exist on the target (see the module's docstring).

    ``existing``: the target's roles. ``skip_existing`` False: a role of the dump that exists (other than
    ``login``, the role the restore runs as, which always exists) is a conflict, listed in
    :attr:`conflicts` for the caller to refuse the restore with; its statements are dropped meanwhile, so
    the whole dump is read and every conflict named at once. :attr:`skipped` lists the roles left as they
    were, :attr:`created` the ones the dump creates."""

    #: A statement is never this long in a genuine globals dump.
    LONGEST = 16 << 20

    def __init__(self, existing: Collection[str], login: str, *, skip_existing: bool) -> None:
        self._existing = frozenset(existing)
        self._login = login
        self._skip = skip_existing
        self._buf = b""  # the statement being read, from just after the previous one's ;
        self._pos = 0  # where reading resumes in _buf
        self._state = _SQL
        self._line = 1  # the dump's line at which _buf starts
        self.skipped: list[str] = []
        self.conflicts: list[str] = []
        self.created: list[str] = []

    def feed(self, chunk: bytes) -> bytes:
        self._buf += chunk
        out = self._read(final=False)
        if len(self._buf) > self.LONGEST:
            raise UnexpectedStatementError(f"the globals dump has a statement of over {self.LONGEST >> 20} MiB "
                                           f"(from line {self._line}), which pg_dumpall never writes", self._line)
        return out

    def flush(self) -> bytes:
        """The rest: blank lines and comments, or a last statement without its ``;`` (which psql runs too)."""
        out = self._read(final=True)
        rest, self._buf, self._pos, self._state = self._buf, b"", 0, _SQL
        return out + (self._statement(rest) if rest else b"")

    def _read(self, *, final: bool) -> bytes:
        out: list[bytes] = []
        buf, pos, start = self._buf, self._pos, 0  # start: where the current statement begins in buf
        while True:
            if self._state == _SQL:
                m = _STOP.search(buf, pos)
                if m is None:  # a last - or / may start a comment with the next chunk's first byte
                    pos = len(buf) if final else max(pos, len(buf) - 1)
                    break
                i, found = m.start(), m[0]
                if found == b";":
                    out.append(self._statement(buf[start:i + 1]))
                    start = pos = i + 1
                elif found == b"'":
                    escape = buf[i - 1:i] in (b"E", b"e") and (i - 2 < start or buf[i - 2] not in _IDENT_BYTES)
                    self._state, pos = (_ESCAPE_STRING if escape else _STRING), i + 1
                elif found == b'"':
                    self._state, pos = _QUOTED, i + 1
                elif found == b"--":
                    end = buf.find(b"\n", i)
                    if end < 0:
                        pos = len(buf) if final else i
                        break
                    pos = end + 1
                elif found == b"$" and i > start and buf[i - 1] in _IDENT_BYTES:
                    pos = i + 1  # part of a name (a$b)
                else:  # $ quoting or a parameter, /* */, a psql meta-command
                    raise self._unexpected(buf[start:], i - start, "which pg_dumpall never writes for globals")
                continue
            quote = b'"' if self._state == _QUOTED else b"'"
            i = buf.find(quote, pos)
            if self._state == _ESCAPE_STRING:
                slash = buf.find(b"\\", pos, i if i >= 0 else len(buf))
                if slash >= 0:
                    if slash + 1 >= len(buf) and not final:
                        pos = slash
                        break
                    pos = slash + 2
                    continue
            if i < 0:
                pos = len(buf)
                break
            if i + 1 >= len(buf) and not final:  # a doubled quote, or the end of the literal?
                pos = i
                break
            if buf[i + 1:i + 2] == quote:
                pos = i + 2
            else:
                self._state, pos = _SQL, i + 1
        self._buf, self._pos = buf[start:], pos - start
        return b"".join(out)

    def _unexpected(self, buf: bytes, at: int, why: str) -> UnexpectedStatementError:
        line = self._line + buf.count(b"\n", 0, at)
        start = buf.rfind(b"\n", 0, at) + 1
        end = buf.find(b"\n", at)
        text = buf[start:end if end >= 0 else len(buf)][:60].decode("utf-8", "replace")
        return UnexpectedStatementError(f"line {line}: {text!r}, {why}", line)

    def _statement(self, unit: bytes) -> bytes:
        """What to send for one statement (``unit``: from after the previous ``;`` to its own)."""
        start = _LEAD.match(unit).end()  # type: ignore[union-attr]  # matches the empty string at least
        head = unit[start:]
        lines = unit.count(b"\n")
        if head in (b"", b";"):
            self._line += lines
            return unit
        if not _ALLOWED.match(head) or (_STD_STRINGS.match(head) and not _STD_STRINGS_ON.fullmatch(head)):
            raise self._unexpected(unit, start, "a statement pg_dumpall never writes for globals")
        self._line += lines
        create = _CREATE.match(head)
        if create:
            name = role_name(create[1])
            if name not in self._existing:
                self.created.append(name)
                return unit
            (self.skipped if self._skip or name == self._login else self.conflicts).append(name)
            return b"\n" * lines
        about = _ABOUT.match(head)
        if about and role_name(about[1]) in self._existing:
            return b"\n" * lines
        return unit
