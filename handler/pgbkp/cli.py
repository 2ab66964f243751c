"""The ``pgbkp`` command. Exit codes: 0 all good, 1 some backup failed, 2 configuration or usage error
(found before any work), 128 + N when signal N (SIGINT 130, SIGTERM 143, SIGHUP 129) stopped a run.

``pgbkp backup`` is a thin edge over :func:`pgbkp.handler_core.handle`, the path ``pgbkp serve`` and the
Lambda function take too, so all three behave alike and report one result shape. Like them, it chooses
the store (S3) and passes it down.

The other commands are declared by name in :mod:`pgbkp.commands` (``restore_cli``: list, restore, verify;
``runner``: serve, health) and their module is imported only when the command runs, as are the backup's own
heavy modules (boto3, the archive, the handler): ``pgbkp --version`` and ``--help`` start in a tenth of the
time (issue 17). A dependency a command misses fails that command loudly; it never drops the command.

Users never see a traceback: every known failure is one line that says what to fix
(LOG_LEVEL=DEBUG shows the traceback of an unexpected one).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pgbkp import __version__, commands, logs
from pgbkp.config import Config, ConfigError, load, setting
from pgbkp.output import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_selection, size, summary_text, table
from pgbkp.redact import redact

if TYPE_CHECKING:
    from pgbkp.pipeline import DatabaseResult

log = logging.getLogger("pgbkp.cli")

EXIT_CODES = ("Exit codes: 0 all good, 1 some backup failed (the others still ran), 2 configuration or usage "
              "error (nothing ran), 128+N stopped by signal N (130 Ctrl-C/SIGINT, 143 SIGTERM, 129 SIGHUP).")


class UsageError(Exception):
    """Wrong command-line use; exits 2 like a configuration error."""


def print_summary(summary: Mapping[str, Any], out: Any = None, *, errors: bool = True) -> None:
    """The handler's result as a table (database, object, bytes dumped, bytes stored, seconds, status),
    then errors, skipped databases and retention, one line each.

    ``errors=False`` when the text log on the console has already shown each error once."""
    out = out or sys.stdout
    rows = []
    for r in summary.get("results", []):
        where = f"s3://{r['bucket']}/{r['key']}" if r["key"] else "-"
        if r["status"] == "dry-run":  # nothing was dumped: all we know is the size on disk
            dumped, stored, seconds = f"~{size(r['size_estimate'])} on disk (estimate)", "-", "-"
        elif r["status"] == "dispatched":  # backed up by an ECS Fargate task, which reports it itself
            where, dumped, stored, seconds = r["task_arn"], f"~{size(r['size_estimate'])} on disk", "-", "-"
        else:
            dumped, stored, seconds = size(r["raw_bytes"]), size(r["object_bytes"]), f"{r['seconds']:.1f}"
        rows.append([f"{r['connection']}/{r['database']}", where, dumped, stored, seconds, r["status"]])
    for s in summary.get("skipped", []):
        rows.append([f"{s['connection']}/{s['database']}", "-", "-", "-", "-", "skipped"])
    if rows:
        print(table(rows, ["database", "object", "dumped", "stored", "seconds", "status"]), file=out)
    for r in summary.get("results", []):
        if r["error"] and errors:
            print(f"error: {r['connection']}/{r['database']}: {r['error']}", file=sys.stderr)
    for s in summary.get("skipped", []):
        print(f"skipped: {s['connection']}/{s['database']}: {s['reason']}", file=out)
    for r in summary.get("results", []):
        for d in r["retention"]["deleted"]:
            verb = "deleted" if d["done"] else "would delete"
            print(f"retention: {verb} s3://{r['bucket']}/{d['key']} ({'; '.join(d['reasons'])})", file=out)
        for d in r["retention"].get("locked", []):
            print(f"retention: kept s3://{r['bucket']}/{d['key']} ({'; '.join(d['reasons'])})", file=out)


class _StopFlag:
    """SIGTERM, SIGINT and SIGHUP ask the run to stop: no new database starts, the dump in flight is
    aborted (its upload too, leaving nothing behind), and the command exits 128 + the signal's number.

    The handler only raises a lock-free flag (health.Alarm): a handler that logged or set a
    threading.Event could wait for ever on a lock its own interrupted thread holds. The warning is
    written by the main thread the next time the pipeline asks whether to stop (it asks every chunk)."""

    def __init__(self) -> None:
        from pgbkp import health

        self.alarm = health.Alarm()
        self.signum: int | None = None
        self._said = False

    def is_set(self) -> bool:
        if not self.alarm.is_set():
            return False
        if not self._said and self.signum is not None:
            self._said = True
            log.warning("received %s: aborting the backup in flight, starting no other",
                        signal.Signals(self.signum).name)
        return True

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.signum is None:
            self.signum = signum
        self.alarm.set()

    @contextmanager
    def installed(self) -> Iterator[_StopFlag]:
        from pgbkp import runner

        previous = {sig: signal.signal(sig, self._on_signal) for sig in runner.STOP_SIGNALS}  # as serve's
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


#: ECS sets it in every container of a task (metadata endpoint v4, Fargate platform 1.4.0 and later).
ECS_MARKER = "ECS_CONTAINER_METADATA_URI_V4"


def emf_to_stdout(env: Mapping[str, str]) -> bool:
    """PGBKP_EMF: ``stdout``, or ``auto`` (the default) inside an ECS task."""
    mode = setting(env, "PGBKP_EMF")
    return mode == "stdout" or (mode == "auto" and bool(env.get(ECS_MARKER)))


def emf_report(service: str, out: Any = None) -> Callable[[DatabaseResult], None]:
    """``Edge.report`` for the Fargate task: each database's EMF document on stdout (the awslogs driver
    sends it to CloudWatch, which extracts the metrics), as the Lambda function emits them."""

    from pgbkp import emf

    def report(result: DatabaseResult) -> None:
        line = emf.document(connection=result.connection, database=result.database, service=service,
                            ok=result.status == "ok", object_bytes=result.object_bytes, seconds=result.seconds,
                            retention_deleted=sum(a.action == "delete" and a.done for a in result.retention))
        print(line, file=out or sys.stdout, flush=True)

    return report


def cmd_backup(config: Config, args: argparse.Namespace) -> int:
    """Back up through the handler (as ``serve`` and Lambda do), with the runner's pings and log file."""
    from pgbkp import emf, handler_core, health, history, metrics, progress, runner  # only now: see the docstring
    from pgbkp.pipeline import StorageCache
    from pgbkp.storage.s3 import S3Storage

    runner.add_log_file(config)
    textfile = metrics.textfile_path(config.env)  # checked before any work, even for a dry run
    pinger = health.Pinger(config.env.get("HEALTHCHECK_URL"))  # checked even for a dry run...
    if args.dry_run:
        pinger = health.Pinger(None)  # ...which neither starts nor ends a check: monitoring records real runs
    request = handler_core.Request(connections=tuple(args.connection or ()),
                                   databases=tuple(dict.fromkeys(args.database)) if args.database else None,
                                   dry_run=args.dry_run)
    stop = _StopFlag()
    stores = StorageCache(lambda settings: S3Storage(settings, should_stop=stop.is_set))
    observer = progress.make_observer()
    edge = handler_core.Edge(storage_for=stores, observers=[observer], should_stop=stop.is_set,
                             sizes=isinstance(observer, progress.BarObserver))  # a bar's total: the size
    service = config.env.get("POWERTOOLS_SERVICE_NAME") or "pgbkp"
    emf_on = emf_to_stdout(config.env) and not args.dry_run
    if emf_on:
        edge.report = emf_report(service)
    with stop.installed():
        pinger.start("pgbkp backup started")
        try:
            summary, code = handler_core.handle(request, None, config=config, edge=edge), EXIT_OK
        except handler_core.BackupFailedError as exc:
            summary, code = exc.summary, EXIT_FAILED
        except ConfigError as exc:
            pinger.fail(f"configuration error: {redact(str(exc))}")
            raise
        except Exception as exc:
            pinger.fail(redact(f"error: {type(exc).__name__}: {exc}"))
            raise
    if emf_on:  # the staleness alarm's series counts the task's backups too
        print(emf.backed_up(service=service, count=sum(r.get("status") == "ok" for r in summary.get("results", []))),
              flush=True)
    body = summary_text(list(summary.get("results", [])))
    (log.info if code == EXIT_OK else log.error)("backup %s: %s", "done" if code == EXIT_OK else "failed",
                                                  body.splitlines()[0])
    (pinger.success if code == EXIT_OK else pinger.fail)(body)
    if textfile is not None and not args.dry_run:  # the history gives the counters and last successes
        finished = datetime.now(config.timezone).isoformat(timespec="seconds")
        metrics.Monitor(history.path_for(config.env), textfile).after_run(list(summary.get("results", [])), finished)
    pinger.flush(health.EXIT_PING_WAIT, stop.alarm)  # pings go out in the background, within a deadline
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print_summary(summary, errors=console_format(config) == "json")
    if stop.signum is not None and code != EXIT_OK:
        name = signal.Signals(stop.signum).name
        print(f"pgbkp: stopped by {name}: the backup in flight was aborted, no other was started", file=sys.stderr)
        return 128 + stop.signum
    return code


def console_format(config: Config | None) -> str:
    """The console log format in effect: LOG_FORMAT, else text on a terminal and JSON elsewhere."""
    chosen = config.log_format if config else None
    return chosen or ("text" if sys.stderr.isatty() else "json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgbkp",
        description="Stream PostgreSQL backups (pg_dump -> ZIP, AES-256 if ZIP_PASSWORD is set) into S3 or "
        "any S3-compatible store. Configuration comes from the environment (see README.md).",
        epilog=EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=f"pgbkp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    b = sub.add_parser("backup", help="back up now: every database of every connection (or a selection)",
                       description="Back up now, through the same handler as `pgbkp serve` and the Lambda "
                       "function. Each database is streamed pg_dump -> ZIP -> S3, then retention runs for that "
                       "database; one that fails never stops the others. Honours LOG_FILE and HEALTHCHECK_URL "
                       "as `pgbkp serve` does.", epilog=EXIT_CODES)
    add_selection(b, databases="append")
    b.add_argument("--dry-run", action="store_true", help="print what would be dumped (size on disk, an "
                   "estimate), where, and what retention would delete; change nothing, send no ping")
    b.add_argument("--json", action="store_true", help="print the result as JSON, the same document the "
                   "Lambda function returns")
    b.set_defaults(func=cmd_backup)

    commands.register(sub)  # list, restore, verify, serve, health: each module imported when it runs
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = os.environ.get("LOG_LEVEL", "").upper() == "DEBUG"
    try:
        func = args.func.load() if isinstance(args.func, commands.Command) else args.func
        config = load(log_warnings=False) if getattr(args, "needs_config", True) else None
        logs.setup(config.log_level if config else "INFO", console_format(config))
        if config:
            config.log_warnings()  # after the set-up, so they are log lines like any other (JSON, LOG_FILE)
        code = int(func(config, args))
    except ConfigError as exc:
        print(f"pgbkp: configuration error: {redact(str(exc))}", file=sys.stderr)
        if getattr(args, "func", None) is cmd_backup:  # under cron, a broken setting is a failed backup too
            from pgbkp import notify

            notify.config_failed(os.environ, str(exc))
        return EXIT_USAGE
    except UsageError as exc:
        print(f"pgbkp: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("pgbkp: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the promise is one line, never a traceback
        if debug:
            log.exception("unexpected error")
        print(f"pgbkp: error: {redact(f'{type(exc).__name__}: {exc}')}"
              + ("" if debug else " (LOG_LEVEL=DEBUG shows details)"), file=sys.stderr)
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
