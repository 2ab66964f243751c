"""``pgbkp list``, ``pgbkp restore`` and ``pgbkp verify``: the command-line face of :mod:`pgbkp.restore`.

Every known failure is one line on stderr and exit 1; usage mistakes exit 2 (ConfigError, which
cli.main turns into exit 2, or a message printed here). Progress bars only on a terminal.

This edge builds the store (one S3 client per distinct S3 settings) and passes it to :mod:`pgbkp.restore`.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from pgbkp import history, postgres, restore
from pgbkp.archive import ArchiveError
from pgbkp.config import Config, ConfigError, Connection
from pgbkp.output import EXIT_FAILED, EXIT_OK, size, table
from pgbkp.pipeline import StorageCache
from pgbkp.redact import redact
from pgbkp.storage import StorageError
from pgbkp.storage.s3 import S3Storage

KNOWN_ERRORS = (restore.RestoreError, StorageError, postgres.PostgresError, ArchiveError)


def _fail(exc: BaseException) -> int:
    print(f"pgbkp: error: {redact(str(exc))}", file=sys.stderr)
    return EXIT_FAILED


def _connections(config: Config, names: list[str] | None) -> list[Connection]:
    return [config.connection(n) for n in names] if names else list(config.connections)


class _Bar:
    """A tqdm byte bar on a terminal; nothing otherwise (logs and the summary say enough)."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._bar: Any = None

    def start(self, total: int) -> None:
        if not sys.stderr.isatty():
            return
        from tqdm import tqdm

        self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc=self._label,
                         file=sys.stderr, dynamic_ncols=True, leave=False)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# --------------------------------------------------------------------------------------------------
# list


def cmd_list(config: Config, args: argparse.Namespace) -> int:
    found: list[restore.BackupRef] = []
    storage_for = StorageCache(S3Storage)
    try:
        for conn in _connections(config, args.connection):
            found += restore.find_backups(config, conn, args.database, storage=storage_for(conn))
    except KNOWN_ERRORS as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps([b.as_dict() for b in found], indent=2, ensure_ascii=False))
        return EXIT_OK
    if not found:
        print("no backups found", file=sys.stderr)
        return EXIT_OK
    rows = [[b.connection, b.database, f"{b.taken:%Y-%m-%d %H:%M}" if b.taken else "?", size(b.size), b.format,
             b.url] for b in found]
    print(table(rows, ["connection", "database", f"taken ({config.timezone.key})", "size", "format", "object"]))
    print(f"{len(found)} backup(s), {size(sum(b.size for b in found))}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------------
# restore


def _one_connection(config: Config, name: str | None) -> Connection:
    if name is not None:
        return config.connection(name)
    if len(config.connections) == 1:
        return config.connections[0]
    names = ", ".join(repr(c.name) for c in config.connections)
    raise ConfigError(f"restore: which connection? PG_URLS defines {names}. Fix: add --connection NAME.")


def cmd_restore(config: Config, args: argparse.Namespace) -> int:
    conn = _one_connection(config, args.connection)
    at = restore.parse_at(args.at, config) if args.at else None
    if args.globals and (args.database or args.create or args.force):
        raise ConfigError("restore --globals: roles belong to the server, not to a database, so --database, --create "
                          "and --force do not apply. Fix: drop them; --target-url names the server (and the "
                          "database psql connects to).")
    if args.skip_existing and not args.globals:
        raise ConfigError("restore --skip-existing: only a globals restore skips what exists. Fix: add --globals.")
    target = restore.parse_target(args.target_url, env=config.env, fallback=conn.pg)
    bar = _Bar(f"restore {'globals' if args.globals else target.database}")
    try:
        storage = S3Storage(conn.s3)  # one client for finding and reading: each costs a start-up
        backup = restore.select_backup(config, conn, args.database, at=at, key=args.key, storage=storage,
                                       globals_only=args.globals)
        if args.globals:
            return _restore_globals(config, backup, target, storage, args.skip_existing, bar)
        taken = f" taken {backup.taken:%Y-%m-%d %H:%M}" if backup.taken else ""
        print(f"restoring {backup.url}{taken} into {target.display}", file=sys.stderr)
        try:
            result = restore.restore_backup(config, backup, target, create=args.create, force=args.force,
                                            storage=storage, on_start=bar.start, on_progress=bar.update)
        finally:
            bar.close()
    except KNOWN_ERRORS as exc:
        return _fail(exc)
    rate = size(round(result.rate)) + "/s"
    print(f"restored {backup.url} into {result.target}: {size(result.object_bytes)} read, "
          f"{size(result.sql_bytes)} of SQL, {result.seconds:.1f}s ({rate}); "
          f"checked: {', '.join(result.checks)}")
    return EXIT_OK


def _restore_globals(config: Config, backup: restore.BackupRef, target: postgres.RestoreTarget, storage: S3Storage,
                     skip_existing: bool, bar: _Bar) -> int:
    taken = f" taken {backup.taken:%Y-%m-%d %H:%M}" if backup.taken else ""
    print(f"restoring the roles and other globals of {backup.url}{taken} on {target.user}@{target.host}:"
          f"{target.port}", file=sys.stderr)
    try:
        result = restore.restore_globals(config, backup, target, storage=storage, skip_existing=skip_existing,
                                         on_start=bar.start, on_progress=bar.update)
    finally:
        bar.close()
    print(f"restored {backup.url} on {result.target}: {len(result.created_roles)} role(s) created, "
          f"{len(result.skipped_roles)} already there and left as they were"
          + (f" ({', '.join(result.skipped_roles)})" if result.skipped_roles else "")
          + f"; checked: {', '.join(result.checks)}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------------
# verify


def cmd_verify(config: Config, args: argparse.Namespace) -> int:
    results: list[restore.VerifyResult] = []
    bars: dict[str, _Bar] = {}
    storage_for = StorageCache(S3Storage)

    def bar(result: restore.VerifyResult) -> _Bar:
        return bars.setdefault(result.database, _Bar(f"verify {result.database}"))

    try:
        for conn in _connections(config, args.connection):
            results += restore.verify(config, conn, args.database, args.scratch_url, storage=storage_for(conn),
                                      on_start=lambda r, n: bar(r).start(n),
                                      on_progress=lambda r, n: bar(r).update(n))
    finally:
        for b in bars.values():  # a failed database may leave its bar open
            b.close()
    if args.json:
        print(json.dumps({"ok": all(r.ok for r in results), "results": [r.as_dict() for r in results]},
                         indent=2, ensure_ascii=False))
    else:
        rows = [[f"{r.connection}/{r.database}", r.taken or "-", "-" if r.kind == "globals" else str(r.tables),
                 f"{r.roles} roles" if r.kind == "globals" else str(r.rows),
                 size(r.restored_size), f"{r.seconds:.1f}", r.status] for r in results]
        if rows:
            print(table(rows, ["database", "backup taken", "tables", "rows", "restored size", "seconds",
                                "status"]))
        for r in results:
            if r.error:
                print(f"error: {r.connection}/{r.database}: {r.error}", file=sys.stderr)
    _record_verify(config, results)
    if not results:
        print("pgbkp: error: verify found no backups to check", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


def _record_verify(config: Config, results: list[restore.VerifyResult]) -> None:
    """The last restore test of each database, for the status page and /metrics: only where a history is
    kept already (pgbkp serve, or pgbkp backup with METRICS_TEXTFILE), so a one-off verify leaves no file."""
    path = history.path_for(config.env)
    if not results or not path.is_file():
        return
    kept = history.History(path)
    finished = datetime.now(config.timezone).isoformat(timespec="seconds")
    for r in results:
        kept.record_verify(r.connection, r.database, finished, r.ok, r.error)

