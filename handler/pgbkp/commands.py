"""The arguments of ``pgbkp list|restore|verify|serve|health``, and where each command's code lives.

``pgbkp`` imports a command's module only when that command runs (issue 17): ``--version``, ``--help`` and
``health`` never pay for boto3, the archive, the restore engine or the scheduler. Every command is declared
here by name, so a module that cannot be imported (a missing dependency) still leaves its command in
``--help`` and fails loudly when the command is run, instead of the command silently disappearing.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pgbkp.output import add_selection


@dataclass(frozen=True)
class Command:
    """``module.function(config, args) -> exit code``, imported only when the command runs."""

    module: str
    function: str

    def load(self) -> Callable[..., int]:
        func: Callable[..., int] = getattr(importlib.import_module(self.module), self.function)
        return func


def register(subparsers: Any) -> None:
    """Add list, restore, verify (``restore_cli``) and serve, health (``runner``) to the ``pgbkp`` parser."""
    add: Callable[..., argparse.ArgumentParser] = subparsers.add_parser

    p = add("list", help="list the stored backups, newest first",
            description="List every backup of each connection and database: the time in its file name "
            "(TIMEZONE), size, bucket and key. Newest first.")
    add_selection(p, databases="store")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=Command("pgbkp.restore_cli", "cmd_list"))

    r = add("restore", help="restore a backup into an empty (or new) database",
            description="Stream a backup from S3 into psql in ONE transaction, committed only after the "
            "object's SHA-256 and the ZIP's CRC (or AES authentication code) check out. psql runs under "
            "pgbkp's own \\restrict, so a psql command hidden in a backup (\\! runs a shell) never runs: the "
            "backup is refused. On any failure the target is left untouched.")
    r.add_argument("--connection", "-c", metavar="NAME", help="the connection whose backups to use "
                   "(needed when PG_URLS has several)")
    r.add_argument("--database", "-d", metavar="DB", help="the backed-up database (not needed with --key)")
    r.add_argument("--globals", action="store_true", help="restore the connection's roles and other globals "
                   "(BACKUP_GLOBALS) on the target's server instead of a database; do it before the databases")
    r.add_argument("--skip-existing", action="store_true", help="with --globals: leave the roles the target "
                   "already has as they are (the role you log in as always is) and create the others")
    pick = r.add_mutually_exclusive_group()
    pick.add_argument("--latest", action="store_true", help="the newest backup (the default)")
    pick.add_argument("--at", metavar='"YYYY-MM-DD HH:MM"', help="the newest backup at or before this "
                      "time (TIMEZONE)")
    pick.add_argument("--key", metavar="KEY", help="exactly this object: a key, or s3://bucket/key")
    r.add_argument("--target-url", required=True, metavar="postgres://...",
                   help="where to restore; its database is the target and nothing else is touched. Leave the "
                   "password out (it would show in ps): it comes from PGPASSWORD, or from the connection "
                   "when the target is the same server and user")
    r.add_argument("--create", action="store_true", help="create the target database (it must not exist)")
    r.add_argument("--force", action="store_true", help="restore even if the target database is not empty")
    r.set_defaults(func=Command("pgbkp.restore_cli", "cmd_restore"))

    v = add("verify", help="prove the latest backups restore: into a scratch database, then drop it",
            description="For each database, restore its latest backup into a new scratch database "
            "(pgbkp_verify_<db>_<random>), report tables, rows and size, and drop it, even on failure. "
            "Exit 0 only if every backup verified.")
    add_selection(v, databases="append")
    v.add_argument("--scratch-url", metavar="postgres://...", help="server for the scratch databases "
                   "(default: the connection's own server); its database part is not used")
    v.add_argument("--json", action="store_true", help="print the results as JSON")
    v.set_defaults(func=Command("pgbkp.restore_cli", "cmd_verify"))

    s = add("serve", help="back up now, then on CRON_SCHEDULE (the docker-compose entry point)",
            description="Back up every connection now, then on CRON_SCHEDULE in TIMEZONE (default '0 3 * * *'), "
            "until SIGTERM/SIGINT/SIGHUP. CRON_ENABLED=false backs up once and exits with its code. Logs also go "
            "to LOG_FILE (default /var/log/pg-backup.log when writable); the status file HEALTH_FILE feeds "
            "`pgbkp health`; HEALTHCHECK_URL receives start/success/fail pings.")
    s.set_defaults(func=Command("pgbkp.runner", "cmd_serve"))
    h = add("health", help="exit 0 if the runner is healthy, 1 if not (a Docker HEALTHCHECK)",
            description="Read the status file pgbkp serve writes. Unhealthy (exit 1) when the last run failed or "
            "no run succeeded within two schedule periods.")
    # health.default_file() in words: importing health (urllib, the scheduler) for a help line costs more
    h.add_argument("--file", metavar="PATH", help="status file (default: HEALTH_FILE, else "
                   "/tmp/pgbkp-health.json as root, /tmp/pgbkp-health-UID.json for any other user)")
    h.set_defaults(func=Command("pgbkp.health", "cmd_health"), needs_config=False)
