"""The ``pgbkp`` command. Exit codes: 0 all good, 1 some backup failed, 2 configuration or usage error.

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
import threading
from collections.abc import Callable, Sequence
from typing import Any

from pgbkp import __version__, logs
from pgbkp.config import Config, ConfigError, load
from pgbkp.redact import redact

log = logging.getLogger("pgbkp.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Wrong command-line use; exits 2 like a configuration error."""


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(lines)


def print_summary(result: Any, out: Any = None, *, errors: bool = True) -> None:
    """Per-database summary: database, bucket/key, raw bytes, object bytes, seconds, status.

    ``errors=False`` when the text log on the console has already shown each error once."""
    out = out or sys.stdout
    rows = []
    for r in result.results:
        where = f"s3://{r.bucket}/{r.key}" if r.key else "-"
        rows.append([f"{r.connection}/{r.database}", where, human(r.raw_bytes), human(r.object_bytes),
                     f"{r.seconds:.1f}", r.status])
    for job in result.deferred:
        rows.append([f"{job.connection.name}/{job.database}", job.url, "-", "-", "-", "deferred"])
    if rows:
        print(table(rows, ["database", "object", "dumped", "stored", "seconds", "status"]), file=out)
    for r in result.results:
        if r.error and errors:
            print(f"error: {r.connection}/{r.database}: {r.error}", file=sys.stderr)
        for a in r.retention:
            if a.action == "delete":
                verb = "deleted" if a.done else "would delete"
                print(f"retention: {verb} s3://{r.bucket}/{a.key} ({'; '.join(a.reasons)})", file=out)


def cmd_backup(config: Config, args: argparse.Namespace) -> int:
    from pgbkp import pipeline

    the_plan = pipeline.plan(config, connections=args.connection, databases=args.database)
    observer = _progress_observer()
    stop = threading.Event()

    def on_sigterm(signum: int, _frame: object) -> None:
        log.warning("received %s: aborting the backup in flight, starting no other", signal.Signals(signum).name)
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_sigterm)  # Ctrl-C raises KeyboardInterrupt: also aborted
    try:
        result = pipeline.run(config, the_plan, dry_run=args.dry_run, observer=observer, should_stop=stop.is_set)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        print(json.dumps({"ok": result.ok, "results": [r.as_dict() for r in result.results]}, indent=2,
                         ensure_ascii=False))
    else:
        print_summary(result, errors=console_format(config) == "json")
    return EXIT_OK if result.ok else EXIT_FAILED


def console_format(config: Config | None) -> str:
    """The console log format in effect: LOG_FORMAT, else text on a terminal and JSON elsewhere."""
    chosen = config.log_format if config else None
    return chosen or ("text" if sys.stderr.isatty() else "json")


def _progress_observer() -> Any:
    """Progress bars on a terminal, periodic lines elsewhere (pgbkp.progress), if available."""
    try:
        from pgbkp import progress
    except ImportError:
        return None
    return progress.make_observer()


def add_selection(parser: argparse.ArgumentParser, *, databases: str = "append") -> None:
    """The --connection/--database options every command that picks databases shares.

    ``databases="store"`` takes one database instead of a repeatable list."""
    parser.add_argument("--connection", "-c", action="append", metavar="NAME",
                        help="only this connection (its prefix or host, or 0-based index); repeatable")
    parser.add_argument("--database", "-d", action=databases, metavar="DB",
                        help="only this database" + ("; repeatable" if databases == "append" else ""))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgbkp",
        description="Stream PostgreSQL backups (pg_dump -> ZIP, AES-256 if ZIP_PASSWORD is set) into S3 or "
        "any S3-compatible store. Configuration comes from the environment (see README.md).",
        epilog="Exit codes: 0 all good, 1 some backup failed, 2 configuration or usage error.",
    )
    parser.add_argument("--version", action="version", version=f"pgbkp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    b = sub.add_parser("backup", help="back up now: every database of every connection (or a selection)",
                       description="Back up now. Each database is streamed pg_dump -> ZIP -> S3, then "
                       "retention runs for that database.")
    add_selection(b, databases="append")
    b.add_argument("--dry-run", action="store_true", help="print what would be dumped, where, and what "
                   "retention would delete; change nothing")
    b.add_argument("--json", action="store_true", help="print the summary as JSON")
    b.set_defaults(func=cmd_backup)

    for register in EXTRA_COMMANDS:
        register(sub)
    return parser


#: Other modules add their subcommands here (list, restore, verify, serve, health).
EXTRA_COMMANDS: list[Callable[[Any], None]] = []


def _load_extra_commands() -> None:
    for name in ("pgbkp.restore_cli", "pgbkp.runner"):
        try:
            module = __import__(name, fromlist=["register"])
        except ImportError:
            continue
        if hasattr(module, "register") and module.register not in EXTRA_COMMANDS:
            EXTRA_COMMANDS.append(module.register)


def main(argv: Sequence[str] | None = None) -> int:
    _load_extra_commands()
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = os.environ.get("LOG_LEVEL", "").upper() == "DEBUG"
    try:
        config = load() if getattr(args, "needs_config", True) else None
        logs.setup(config.log_level if config else "INFO", console_format(config))
        code = int(args.func(config, args))
    except ConfigError as exc:
        print(f"pgbkp: configuration error: {redact(str(exc))}", file=sys.stderr)
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
