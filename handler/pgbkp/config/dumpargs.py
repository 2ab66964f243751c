"""PG_DUMP_ARGS (and ``pg_dump_args=`` in a PG_URLS item): the pg_dump flags pg-bkp does not model, split
like a shell would (shlex, no shell ever runs) and checked against an allow-list.

An allow-list, not a deny-list: pg-bkp streams one plain-SQL dump per database into a ZIP and restores it
with psql into a database of its choosing, so a flag it does not know may break either end without a
word (``-F c`` gives a dump restore cannot read, ``-C`` one that writes to another database). The flags
that someone is likely to try and that cannot work get their own reason and fix; any other flag is
refused naming the allowed ones. docs/configuration.md, "PG_DUMP_ARGS", lists both.
"""

from __future__ import annotations

import difflib
import re
import shlex

from pgbkp.config.values import ConfigError, show

#: The flags passed on, with the kind of value each takes: None (a switch), "int", "pattern" or "name".
ALLOWED: dict[str, str | None] = {
    "--no-owner": None,
    "--no-privileges": None,
    "--quote-all-identifiers": None,
    "--no-comments": None,
    "--no-publications": None,
    "--no-subscriptions": None,
    "--no-security-labels": None,
    "--no-tablespaces": None,
    "--no-toast-compression": None,
    "--no-table-access-method": None,
    "--no-unlogged-table-data": None,
    "--no-policies": None,
    "--no-statistics": None,
    "--statistics": None,
    "--sequence-data": None,
    "--large-objects": None,
    "--no-large-objects": None,
    "--inserts": None,
    "--column-inserts": None,
    "--on-conflict-do-nothing": None,
    "--rows-per-insert": "int",
    "--disable-dollar-quoting": None,
    "--disable-triggers": None,
    "--load-via-partition-root": None,
    "--use-set-session-authorization": None,
    "--serializable-deferrable": None,
    "--extra-float-digits": "int",
    "--exclude-extension": "pattern",
    "--role": "name",
    "--superuser": "name",
    "--encoding": "name",
}
#: (minimum, maximum) of the numbers pg_dump accepts.
_RANGES = {"--rows-per-insert": (1, 2_147_483_647), "--extra-float-digits": (-15, 3)}
#: pg_dump's other names for allowed flags.
ALIASES = {"--no-acl": "--no-privileges", "--blobs": "--large-objects", "--no-blobs": "--no-large-objects"}
#: pg_dump 18's short flags, by their long names.
SHORT = {"-f": "--file", "-F": "--format", "-j": "--jobs", "-v": "--verbose", "-V": "--version", "-Z": "--compress",
         "-a": "--data-only", "-b": "--large-objects", "-B": "--no-large-objects", "-c": "--clean", "-C": "--create",
         "-e": "--extension", "-E": "--encoding", "-n": "--schema", "-N": "--exclude-schema", "-O": "--no-owner",
         "-s": "--schema-only", "-S": "--superuser", "-t": "--table", "-T": "--exclude-table", "-x": "--no-privileges",
         "-d": "--dbname", "-h": "--host", "-p": "--port", "-U": "--username", "-w": "--no-password",
         "-W": "--password", "-?": "--help"}
#: Short flags that take a value, attached (``-Fc``) or as the next word (``-F c``).
_SHORT_WITH_VALUE = frozenset("fFjZeEnNStTdhpU")

_CONNECTION = ("the connection comes from the PG_URLS item's URL", "write it in the URL "
               "(postgres://USER:PASSWORD@HOST:PORT/DATABASE; a role to switch to is --role=NAME)")
_WHOLE = ("a backup holds a whole database", "choose databases with databases= and leave out what you do not "
          "need with exclude_schema=, exclude_table= or exclude_table_data= in the PG_URLS item")
_PARTIAL = ("a backup holds a whole database, its schema and its data", "leave out the data of some tables with "
            "exclude_table_data= in the PG_URLS item")
_RESTORE = ("pgbkp restore writes into an empty database it names itself, where DROP or CREATE DATABASE "
            "statements would fail or write elsewhere", "remove it")


def _exclusion(field: str) -> tuple[str, str]:
    return ("exclusions are set in PG_URLS, per connection or per database, where --dry-run shows them",
            f"write {field}=PATTERN in the PG_URLS item (or db_{field}=DATABASE=PATTERN)")


#: Flags refused for a reason of their own: (why, fix).
REFUSED: dict[str, tuple[str, str]] = {
    "--format": ("restore reads the plain SQL format (-F p) that pg-bkp streams into the ZIP", "remove it"),
    "--file": ("the dump goes to standard output, which pg-bkp streams into the ZIP", "remove it"),
    "--jobs": ("parallel dumps need the directory format, which cannot be streamed", "remove it"),
    "--compress": ("the ZIP compresses the dump already", "remove it; ZIP_COMPRESSION_LEVEL sets the level"),
    "--dbname": _CONNECTION, "--host": _CONNECTION, "--port": _CONNECTION, "--username": _CONNECTION,
    "--password": _CONNECTION, "--no-password": ("pg-bkp passes it already", "remove it"),
    "--lock-wait-timeout": ("pg-bkp sets it", "set PG_LOCK_WAIT_TIMEOUT_SECONDS instead"),
    "--clean": _RESTORE, "--if-exists": _RESTORE, "--create": _RESTORE,
    "--table": _WHOLE, "--schema": _WHOLE, "--extension": _WHOLE, "--table-and-children": _WHOLE,
    "--strict-names": _WHOLE,
    "--exclude-schema": _exclusion("exclude_schema"), "--exclude-table": _exclusion("exclude_table"),
    "--exclude-table-data": _exclusion("exclude_table_data"),
    "--exclude-table-and-children": _exclusion("exclude_table"),
    "--exclude-table-data-and-children": _exclusion("exclude_table_data"),
    "--data-only": _PARTIAL, "--schema-only": _PARTIAL, "--section": _PARTIAL, "--no-data": _PARTIAL,
    "--no-schema": _PARTIAL, "--statistics-only": _PARTIAL,
    "--filter": ("it reads a file on the machine that runs pg_dump", "write exclude_schema=, exclude_table= or "
                 "exclude_table_data= in the PG_URLS item"),
    "--enable-row-security": ("pg_dump then dumps only the rows the backup user may see under row-level security, "
                              "a backup that lacks rows without a word (without it, pg_dump fails instead)",
                              "let the backup user read every row (BYPASSRLS, or the tables' owner) and remove it"),
    "--include-foreign-data": ("a restore, and every pgbkp verify, would write those rows back through the foreign "
                               "server into the remote table", "back up the remote server itself, and remove it"),
    "--snapshot": ("a snapshot exists only while the session that exported it lives", "remove it"),
    "--binary-upgrade": ("it is for pg_upgrade only", "remove it"),
    "--restrict-key": ("pgbkp restore runs psql under a \\restrict key of its own", "remove it"),
    "--verbose": ("pg-bkp reads pg_dump's standard error for its error message only", "remove it"),
    "--version": ("pg_dump would print its version instead of a dump", "remove it"),
    "--help": ("pg_dump would print its help instead of a dump", "remove it"),
    "--no-sync": ("it applies to a dump written to files, and pg-bkp streams it", "remove it"),
    "--sync-method": ("it applies to a dump written to files, and pg-bkp streams it", "remove it"),
}


def check_text(value: str, what: str) -> str:
    """A value that goes into pg_dump's argv: printable, so that messages and logs show it as it is."""
    if not value:
        raise ConfigError(f"{what}: is empty. Fix: give a value, or leave it out.")
    if not value.isprintable():
        raise ConfigError(f"{what}: {show(value)} contains a control character. Fix: remove it.")
    return value


def parse_dump_args(text: str, what: str) -> tuple[str, ...]:
    """The flags in ``text`` as pg_dump argv items, each ``--long-name`` or ``--long-name=value``.

    ``what`` names the setting (``PG_DUMP_ARGS``, or a PG_URLS item's field) in every message."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"{what}: cannot split it into words ({exc}). Fix: close the quote, or drop it "
                          "(the flags pg-bkp allows take no spaces).") from None
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.isprintable():
            raise ConfigError(f"{what}: {show(word)} contains a control character. Fix: remove it.")
        value: str | None = None
        if word.startswith("--"):
            given, eq, rest = word.partition("=")
            flag = ALIASES.get(given, given)
            value = rest if eq else None
        elif word.startswith("-") and len(word) >= 2:
            given = word[:2]
            if given not in SHORT:
                raise ConfigError(f"{what}: {show(given)} is not a pg_dump flag. Fix: remove it; pg-bkp passes "
                                  f"on only {_allowed_list()}.")
            flag = SHORT[given]
            if len(word) > 2:
                if word[1] not in _SHORT_WITH_VALUE:
                    raise ConfigError(f"{what}: {show(word)} puts several short flags together. Fix: write "
                                      "each on its own, in its long form (--no-owner --no-privileges).")
                value = word[2:]
            given = f"{given} ({flag})"
        else:
            raise ConfigError(f"{what}: {show(word)} is not a flag (it does not start with -). Fix: remove it; "
                              "the database and the connection come from PG_URLS.")
        if flag in REFUSED:
            why, fix = REFUSED[flag]
            raise ConfigError(f"{what}: {given} is not allowed: {why}. Fix: {fix}.")
        if flag not in ALLOWED:
            close = difflib.get_close_matches(flag, [*ALLOWED, *ALIASES], n=1, cutoff=0.8)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{what}: {show(given)} is not a pg_dump flag pg-bkp passes on{hint}. Fix: remove "
                              f"it; allowed: {_allowed_list()}.")
        kind = ALLOWED[flag]
        if kind is None:
            if value is not None:
                raise ConfigError(f"{what}: {flag} takes no value. Fix: write {flag} alone.")
            out.append(flag)
            continue
        if value is None:
            if i >= len(words) or words[i].startswith("-"):
                raise ConfigError(f"{what}: {flag} needs a value. Fix: write {flag}=VALUE.")
            value = words[i]
            i += 1
        value = check_text(value, f"{what}: {flag}")
        if kind == "int":
            low, high = _RANGES[flag]
            if not re.fullmatch(r"-?[0-9]{1,10}", value) or not low <= int(value) <= high:
                raise ConfigError(f"{what}: {flag}={show(value, 20)} is not a whole number from {low} to {high}. "
                                  f"Fix: write {flag}=N with N in that range.")
        out.append(f"{flag}={value}")
    return tuple(out)


def _allowed_list() -> str:
    return " ".join(ALLOWED)
