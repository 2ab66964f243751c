"""Prometheus metrics of the local runner and of ``pgbkp backup``: ``/metrics`` and ``METRICS_TEXTFILE``.

Every value comes from the history (:mod:`pgbkp.history`), so the page, the endpoint and the text file
agree, and the counters survive a restart. Labels are ``connection`` and ``database`` only: a connection's
name is its prefix or host, never its URL; no object key, bucket or error text is a label.

prometheus_client is an optional dependency (the ``runner`` extra): the Lambda image does without it. It
is imported when first needed, and :func:`require` turns its absence into a configuration error at start.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pgbkp import __version__, history
from pgbkp.config import ConfigError, setting

log = logging.getLogger("pgbkp.metrics")

PREFIX = "pgbkp"
LABELS = ("connection", "database")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def require(what: str) -> None:
    """Raise the ConfigError a user can act on when prometheus_client is missing (the Lambda image)."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError(f"{what} needs the Python package prometheus_client, which this installation lacks. "
                          "Fix: pip install 'pgbkp[runner]' (the runner image and `make install` have it), "
                          f"or unset {what}.") from None


class _Collector:
    """Builds the metric families from a history snapshot each time it is scraped."""

    def __init__(self, doc: Mapping[str, Any], next_run_at: str | None) -> None:
        self._doc, self._next = doc, next_run_at

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        def gauge(name: str, doc: str) -> Any:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=LABELS)

        def counter(name: str, doc: str) -> Any:
            return CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=LABELS)

        success_at = gauge("last_success_timestamp_seconds", "When the last successful backup of the database "
                           "finished (Unix time).")
        run_at = gauge("last_run_timestamp_seconds", "When the last backup of the database, successful or not, "
                       "finished (Unix time).")
        ok = gauge("backup_success", "1 if the last backup of the database succeeded, 0 if it failed.")
        seconds = gauge("backup_duration_seconds", "How long the last backup of the database took.")
        dumped = gauge("backup_dumped_bytes", "Bytes pg_dump wrote in the last backup of the database.")
        stored = gauge("backup_stored_bytes", "Bytes of the object the last backup of the database stored.")
        backups = counter("backups", "Backups of the database attempted (successful or not).")
        failures = counter("backup_failures", "Backups of the database that failed.")
        deleted = counter("retention_deletions", "Old backups of the database that retention deleted.")
        verify_at = gauge("last_verify_timestamp_seconds", "When `pgbkp verify` last restore-tested the "
                          "database (Unix time).")
        verify_ok = gauge("verify_success", "1 if the last restore test of the database passed, 0 if not.")
        for db in self._doc.get("databases", []):
            labels = [db["connection"], db["database"]]
            if (t := history.timestamp(db.get("last_success_at"))) is not None:
                success_at.add_metric(labels, t)
            if db["backups"]:
                last = db["backups"][-1]
                if (t := history.timestamp(last["at"])) is not None:
                    run_at.add_metric(labels, t)
                ok.add_metric(labels, 1.0 if last["status"] == "ok" else 0.0)
                seconds.add_metric(labels, float(last["seconds"]))
                dumped.add_metric(labels, float(last["raw_bytes"]))
                stored.add_metric(labels, float(last["object_bytes"]))
            backups.add_metric(labels, float(db["backups_total"]))
            failures.add_metric(labels, float(db["failures_total"]))
            deleted.add_metric(labels, float(db["retention_deleted_total"]))
            verify = db.get("last_verify")
            if verify:
                if (t := history.timestamp(verify["at"])) is not None:
                    verify_at.add_metric(labels, t)
                verify_ok.add_metric(labels, 1.0 if verify["ok"] else 0.0)
        yield from (success_at, run_at, ok, seconds, dumped, stored, backups, failures, deleted, verify_at,
                    verify_ok)
        nxt = GaugeMetricFamily(f"{PREFIX}_next_run_timestamp_seconds",
                                "When pgbkp serve runs next (Unix time); absent outside the runner.")
        if (t := history.timestamp(self._next)) is not None:
            nxt.add_metric([], t)
        yield nxt
        info = InfoMetricFamily(f"{PREFIX}_build", "The pgbkp version and the Python running it.")
        info.add_metric([], {"version": __version__, "python": platform.python_version()})
        yield info


def registry(doc: Mapping[str, Any], next_run_at: str | None = None) -> Any:
    """A prometheus_client CollectorRegistry holding only pgbkp's metrics (no process or GC collectors:
    they describe this Python process, not the backups)."""
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(doc, next_run_at))  # type: ignore[arg-type]
    return reg


def exposition(doc: Mapping[str, Any], next_run_at: str | None = None) -> bytes:
    """The Prometheus text format, as ``/metrics`` serves it."""
    from prometheus_client import generate_latest

    return bytes(generate_latest(registry(doc, next_run_at)))


def textfile_path(env: Mapping[str, str]) -> Path | None:
    """METRICS_TEXTFILE, checked (ConfigError), and prometheus_client present when it is set."""
    path: Path | None = setting(env, "METRICS_TEXTFILE")
    if path is not None:
        require("METRICS_TEXTFILE")
    return path


def write_textfile(path: str | os.PathLike[str], doc: Mapping[str, Any], next_run_at: str | None = None) -> bool:
    """Replace ``path`` atomically (prometheus_client writes ``<path>.<pid>.<thread>`` in the same folder,
    which the collector ignores, then renames it). A failure is a warning: metrics never fail a backup."""
    from prometheus_client import write_to_textfile

    try:
        write_to_textfile(os.fspath(path), registry(doc, next_run_at))
    except OSError as exc:
        log.warning("cannot write METRICS_TEXTFILE %s: %s", path, exc.strerror or exc)
        return False
    return True


class Monitor:
    """What a run leaves for monitoring: the history, then the text file. Shared by ``pgbkp serve`` (which
    also serves it over HTTP) and ``pgbkp backup``."""

    def __init__(self, history_file: str | os.PathLike[str] | None, textfile: str | os.PathLike[str] | None) -> None:
        self.history = history.History(history_file)
        self.textfile = Path(textfile) if textfile is not None else None
        self.next_run_at: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Monitor:
        return cls(history.path_for(env), textfile_path(env))

    def after_run(self, rows: Iterable[Mapping[str, Any]], finished_at: str) -> None:
        self.history.record_run(rows, finished_at)
        self.write()

    def set_next_run(self, at: str | None) -> None:
        self.next_run_at = at
        self.write()

    def write(self) -> None:
        if self.textfile is not None:
            write_textfile(self.textfile, self.history.snapshot(), self.next_run_at)

    def exposition(self) -> bytes:
        return exposition(self.history.snapshot(), self.next_run_at)
