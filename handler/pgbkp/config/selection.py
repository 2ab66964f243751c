"""What a connection backs up: ``databases=`` (which databases, by name or pattern) and the exclude fields
(``exclude_schema=``, ``exclude_table=``, ``exclude_table_data=`` and their per-database ``db_`` forms),
checked here and turned into pg_dump flags.

Patterns are lists separated by commas outside double quotes. In ``databases=`` a pattern is matched here,
against the names the server lists: ``*`` is any run of characters, ``?`` one character, and double quotes
make what they enclose literal (``""`` inside them is one ``"``); every other character stands for itself,
and case counts (unlike pg_dump, which folds unquoted letters to lower case, because ``ignore=`` and the
server's own list spell names exactly). An item without an unquoted ``*`` or ``?`` is a *name*, which must
exist. Exclude patterns go to pg_dump as they are, one ``--exclude-table=PATTERN`` argv item each, and
pg_dump reads them its own way (``schema.table``, ``*``, ``?``, quotes, folding).
docs/configuration.md, "Which databases" and "Which tables", is the reference.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pgbkp.config.values import ConfigError, show

#: Each exclude field and the pg_dump flag it becomes.
EXCLUDE_FLAGS = {
    "exclude_schema": "--exclude-schema",
    "exclude_table": "--exclude-table",
    "exclude_table_data": "--exclude-table-data",
}


def split_patterns(value: str, what: str) -> tuple[str, ...]:
    """``a,b*,"c,d"`` as its items, each checked: not empty, printable, its double quotes balanced."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    if not value.strip():
        raise ConfigError(f"{what}: is empty. Fix: list one or more names or patterns (a,b_*), or leave it out.")
    return tuple(check_pattern(item.strip(), f"{what}: item {n}") for n, item in enumerate(items, start=1))


def check_pattern(pattern: str, what: str) -> str:
    if not pattern:
        raise ConfigError(f"{what} is empty. Fix: remove the extra comma.")
    if not pattern.isprintable():
        raise ConfigError(f"{what}: {show(pattern)} contains a control character. Fix: remove it.")
    if pattern.count('"') % 2:
        raise ConfigError(f"{what}: {show(pattern)} has an unbalanced double quote. Fix: close the quote (a \" "
                          'inside quotes is written "").')
    return pattern


def _quoting(text: str) -> Iterable[tuple[str, bool]]:
    """Each character of ``text`` with whether it lies between double quotes (the quotes themselves count
    as quoted)."""
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
            yield ch, True
        else:
            yield ch, quoted


def _parts(pattern: str) -> Iterable[tuple[str, bool]]:
    """Each character of ``pattern`` with whether it is a wildcard (an unquoted ``*`` or ``?``)."""
    quoted = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == '"':
            if quoted and pattern[i + 1:i + 2] == '"':
                yield '"', False
                i += 2
                continue
            quoted = not quoted
        else:
            yield ch, ch in "*?" and not quoted
        i += 1


def is_pattern(pattern: str) -> bool:
    """Whether ``pattern`` has a wildcard, or is a database name that must exist."""
    return any(wild for _, wild in _parts(pattern))


def literal(pattern: str) -> str:
    """A name without its quoting: ``"a*b"`` is the name ``a*b``."""
    return "".join(ch for ch, _ in _parts(pattern))


def regex(pattern: str) -> re.Pattern[str]:
    return re.compile("".join((".*" if ch == "*" else ".") if wild else re.escape(ch) for ch, wild in _parts(pattern)),
                      re.DOTALL)


@dataclass(frozen=True)
class Selection:
    """What ``databases=`` picked from a server's list, in the list's order."""

    chosen: tuple[str, ...]
    #: Names (no wildcard) that the server does not list: each fails on its own.
    missing: tuple[str, ...]
    #: Patterns that matched no listed database: a warning, not a failure.
    unmatched: tuple[str, ...]


def select(names: Sequence[str], include: Sequence[str]) -> Selection:
    """The databases among ``names`` that ``include`` names or matches (all of them when it is empty)."""
    if not include:
        return Selection(tuple(names), (), ())
    listed = set(names)
    picked: set[str] = set()
    missing: list[str] = []
    unmatched: list[str] = []
    for item in include:
        if not is_pattern(item):
            name = literal(item)
            if name in listed:
                picked.add(name)
            else:
                missing.append(name)
            continue
        found = {n for n in names if regex(item).fullmatch(n)}
        picked |= found
        if not found:
            unmatched.append(item)
    return Selection(tuple(n for n in names if n in picked), tuple(dict.fromkeys(missing)),
                     tuple(dict.fromkeys(unmatched)))


def exclude_args(field: str, patterns: Iterable[str]) -> tuple[str, ...]:
    """The pg_dump argv items of one exclude field: ``--exclude-table=PATTERN`` each, never split again."""
    return tuple(f"{EXCLUDE_FLAGS[field]}={p}" for p in patterns)


def parse_db_patterns(value: str, what: str) -> dict[str, tuple[str, ...]]:
    """``db_exclude_table=app=audit_*,app=log_*,crm=tmp``: patterns by database. The database name ends at
    the first ``=`` outside double quotes and is a name, not a pattern (``"a=b,c"=tmp`` names the database
    ``a=b,c``, as databases= would); a database may come back for more patterns."""
    out: dict[str, tuple[str, ...]] = {}
    for n, pair in enumerate(split_patterns(value, what), start=1):
        cut = next((i for i, (ch, quoted) in enumerate(_quoting(pair)) if ch == "=" and not quoted), len(pair))
        db, sep, pattern = pair[:cut], pair[cut:cut + 1], pair[cut + 1:]
        db, pattern = literal(db.strip()), pattern.strip()
        if not sep or not db or not pattern:
            raise ConfigError(f"{what}: item {n} ({show(pair)}) is not DATABASE=PATTERN. Fix: write "
                              "db1=pattern,db2=pattern (a database may be named again for more patterns).")
        out[db] = (*out.get(db, ()), check_pattern(pattern, f"{what}: item {n}"))
    return out
