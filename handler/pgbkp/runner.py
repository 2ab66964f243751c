"""The local runner: ``pgbkp serve`` backs up at start and then on CRON_SCHEDULE; ``pgbkp health``.

It replaces the original's crond, which started jobs with an empty environment (the classic failure of
cron containers): this is one long-lived process that keeps its own. Each run goes through the same
handler core as the Lambda function, with the fan-out event ``{}``, so connections run one after another
in-process. Runs never overlap: a tick that comes while a run is still going is skipped and logged.

On SIGTERM, SIGINT or SIGHUP no new database starts; the one in flight gets SHUTDOWN_GRACE_SECONDS to
finish, after which its upload is aborted (no multipart upload is left behind) and the process exits. A
second signal ends the grace period at once. Signal handlers take no lock (see :class:`health.Alarm`):
they set flags that ``should_stop`` reads, and their log lines are written by a thread of their own.

Health pings are sent in the background with a total deadline (:class:`health.Pinger`): a slow or dead
endpoint never delays a run, and delays the exit by at most ``health.EXIT_PING_WAIT`` seconds.
"""

from __future__ import annotations

import argparse
import functools
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import takewhile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgbkp import handler_core, health, logs, metrics, pipeline, progress, schedule
from pgbkp.config import Config, ConfigError, Connection, setting
from pgbkp.output import EXIT_FAILED, EXIT_OK, EXIT_USAGE, summary_text
from pgbkp.pipeline import DatabaseResult, Job, Observer
from pgbkp.redact import redact
from pgbkp.storage import Storage
from pgbkp.storage.s3 import S3Storage, make_client

if TYPE_CHECKING:  # http.server and the page are loaded only when HTTP_ADDR is set
    from pgbkp import webserver

log = logging.getLogger("pgbkp.runner")

DEFAULT_GRACE_SECONDS = 30
#: The longest single sleep: wall-clock jumps (host suspend, NTP) are noticed within this many seconds.
MAX_NAP = 60.0
#: Signals that mean "stop": docker stop, Ctrl-C, and a closed terminal or a reload request.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: One S3 client per distinct settings for the life of ``pgbkp serve``, shared by its runs (each costs
#: 0.12-0.19 s to make; botocore refreshes the credentials it can, such as roles). Each run builds its
#: own S3Storage around it, since a storage keeps per-run state.
s3_client = functools.cache(make_client)


@dataclass
class Outcome:
    """One run, whatever went wrong: exit code, a human summary (the ping body), and per-database results."""

    code: int
    summary: str
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.code == EXIT_OK


#: ``backup(should_stop, observer) -> Outcome``: one run of every connection.
BackupFn = Callable[[Callable[[], bool], Observer], Outcome]


def backup_with_handler(should_stop: Callable[[], bool], observer: Observer, *,
                        storage_for: Callable[[Connection], Storage] | None = None,
                        source: pipeline.DumpSource | None = None, sizes: bool = False) -> Outcome:
    """One run through the Lambda handler's core with the fan-out event ``{}``: outside Lambda it backs up
    every connection here, one after another. The configuration is re-read from the environment; each run
    makes its own stores (unless ``storage_for`` is given) around the process's S3 clients, one per
    distinct S3 settings (:data:`s3_client`); ``source`` replaces pg_dump (tests). ``sizes``: list each
    database's size on disk, for a progress bar's total (costly: only when a bar shows it)."""
    stores = storage_for or pipeline.StorageCache(
        lambda settings: S3Storage(settings, should_stop=should_stop, client=s3_client(settings)))
    edge = handler_core.Edge(storage_for=stores, source=source, observers=[observer], should_stop=should_stop,
                             sizes=sizes)
    try:
        summary = handler_core.handle({}, None, edge=edge)
        code = EXIT_OK
    except handler_core.BackupFailedError as exc:
        summary, code = exc.summary, EXIT_FAILED
    rows = list(summary.get("results", []))
    return Outcome(code, summary_text(rows), rows)


class _Tracking(pipeline.NullObserver):
    """Counts databases in flight, which decides what a stop request means."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def started(self, job: Job) -> None:
        self._runner.in_flight += 1

    def finished(self, job: Job, result: DatabaseResult) -> None:
        self._runner.in_flight -= 1


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


class Runner:
    """The scheduler. ``clock`` (aware datetimes) and ``sleep`` are injectable so tests need not wait."""

    def __init__(
        self,
        *,
        backup: BackupFn,
        schedule: schedule.Schedule | None,
        timezone: str = "UTC",
        observer: Observer | None = None,
        pinger: health.Pinger | None = None,
        health_file: str | Path | None = None,
        grace: float = DEFAULT_GRACE_SECONDS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], Any] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        ping_wait: float | None = None,
        monitor: metrics.Monitor | None = None,
    ) -> None:
        self.schedule = schedule
        self.grace = grace
        self.in_flight = 0
        self._backup = backup
        self._observer = pipeline.MultiObserver([_Tracking(self), *([observer] if observer else [])])
        self._pinger = pinger or health.Pinger(None)
        self._health_file = health_file
        self.monitor = monitor
        self._clock = clock
        self._stop = health.Alarm()  # the first stop request
        self._hurry = health.Alarm()  # a later one: stop waiting for anything
        self._sleep = sleep or self._stop.wait  # a stop request ends the sleep at once
        self._monotonic = monotonic
        self._ping_wait = health.EXIT_PING_WAIT if ping_wait is None else ping_wait
        self._stop_at: float | None = None
        self._aborting = False
        self._abort_lock = threading.Lock()
        self._notes: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._reporter: threading.Thread | None = None
        zone = self.schedule.timezone.key if self.schedule else timezone
        self.status = health.Status(started_at=_iso(self._local(clock())), timezone=zone,
                                    schedule=self.schedule.expression if self.schedule else None)

    def _local(self, t: datetime) -> datetime:
        return t.astimezone(self.schedule.timezone) if self.schedule else t

    # -- stopping --------------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_stop(self, reason: str = "stop requested") -> None:
        """First request: no new database; the current one has ``grace`` seconds. Second: abort now, and
        do not wait for the health pings at exit either.

        Called from signal handlers, so it takes no lock and does not log itself (see :meth:`_say`)."""
        if self._stop.is_set():
            self._hurry.set()
            if self.grace and self.in_flight:
                self._say(f"{reason} again: aborting the current database now")
            self.grace = 0
            return
        self._stop_at = self._monotonic()
        self._stop.set()
        if self.in_flight:
            self._say(f"{reason}: no new database will start; the current one has {self.grace:g}s to finish, "
                      "then its upload is aborted")
        else:
            self._say(f"{reason}: exiting (no backup in progress)")

    def should_stop(self) -> bool:
        """Asked by the pipeline before each database, for every chunk of a dump, and while an upload
        waits: the grace period's end needs no timer, it is noticed on the next question."""
        if not self._stop.is_set():
            return False
        if not self.in_flight:
            return True
        assert self._stop_at is not None
        if self._monotonic() - self._stop_at < self.grace:
            return False
        with self._abort_lock:  # asked from upload threads too: say it once
            first, self._aborting = not self._aborting, True
        if first:
            self._say(f"shutdown grace period ({self.grace:g}s) is over: aborting the current upload")
        return True

    def _say(self, message: str) -> None:
        """A warning about stopping. Once signal handlers are installed, a thread writes it: a handler that
        logged could wait for ever on a lock its own interrupted thread holds (the log handler's, the
        redactor's)."""
        if self._reporter is not None:
            self._notes.put(message)
        else:
            log.warning("%s", message)

    def _report(self) -> None:
        while (message := self._notes.get()) is not None:
            log.warning("%s", message)

    def handle_signals(self, signals: Sequence[signal.Signals] = STOP_SIGNALS) -> None:
        """Install the stop handlers (main thread only)."""
        if self._reporter is None:
            self._reporter = threading.Thread(target=self._report, name="pgbkp-stop-notes", daemon=True)
            self._reporter.start()

        def on_signal(signum: int, _frame: object) -> None:
            self.request_stop(f"received {signal.Signals(signum).name}")

        for sig in signals:
            signal.signal(sig, on_signal)

    # -- running ---------------------------------------------------------------------------------

    def run_once(self) -> Outcome:
        """One run of every connection, with the health pings and the status file around it."""
        started = self._local(self._clock())
        self.status.running_since = _iso(started)
        self._save_status()
        log.info("run started")
        self._pinger.start(f"pgbkp run started at {_iso(started)}")
        try:
            outcome = self._backup(self.should_stop, self._observer)
        except ConfigError as exc:
            outcome = Outcome(EXIT_USAGE, f"configuration error: {redact(str(exc))}")
        except Exception as exc:  # a run must never kill the scheduler
            log.debug("run failed unexpectedly", exc_info=True)
            outcome = Outcome(EXIT_FAILED, redact(f"error: {type(exc).__name__}: {exc}"))
        finally:
            self.in_flight = 0
        if self.stopping:
            outcome.summary += "\nthe runner was asked to shut down during this run"
        finished = self._local(self._clock())
        seconds = (finished - started).total_seconds()
        status = "ok" if outcome.ok else "failed"
        (log.info if outcome.ok else log.error)("run %s in %.1fs: %s", status, seconds,
                                                 outcome.summary.splitlines()[0])
        self.status.running_since = None
        self.status.last_run = health.LastRun(_iso(started), _iso(finished), status, outcome.summary)
        if outcome.ok:
            self.status.last_success_at = _iso(finished)
        self._save_status()
        self._record(lambda m: m.after_run(outcome.results, _iso(finished)))
        (self._pinger.success if outcome.ok else self._pinger.fail)(outcome.summary)
        return outcome

    def _record(self, action: Callable[[metrics.Monitor], None]) -> None:
        """History and METRICS_TEXTFILE: never the reason a run fails or the scheduler stops."""
        if self.monitor is None:
            return
        try:
            action(self.monitor)
        except Exception as exc:
            log.warning("cannot record the run for the metrics and the status page: %s",
                        redact(f"{type(exc).__name__}: {exc}"))

    def serve(self) -> int:
        """Run now, then on every tick until asked to stop. CRON_ENABLED=false: run once, return its code."""
        now = self._clock()
        outcome = self.run_once()
        if self.schedule is None:
            self._finish()
            return outcome.code
        while True:
            end = self._clock()
            self._log_skipped(now, end)
            if self.stopping:
                break
            nxt = self._next(end)
            while not self.stopping and (now := self._clock()) < nxt:
                self._sleep(min((nxt - now).total_seconds(), MAX_NAP))
            if self.stopping:
                break
            self.run_once()
        self._finish()
        log.info("runner stopped")
        return EXIT_OK

    def _finish(self) -> None:
        """Give the last pings a few seconds (none after a second stop request), and write out the notes
        about stopping before the last line."""
        self._pinger.flush(0 if self._hurry.is_set() else self._ping_wait, self._hurry)
        reporter = self._reporter
        if reporter is not None:
            self._notes.put(None)
            reporter.join(timeout=5)

    def _next(self, now: datetime) -> datetime:
        assert self.schedule is not None
        nxt = self.schedule.next_after(now)
        self.status.next_run_at = _iso(nxt)
        self._save_status()
        self._record(lambda m: m.set_next_run(_iso(nxt)))
        log.info("next run at %s (%s, CRON_SCHEDULE=%r)", _iso(nxt), self.schedule.timezone.key,
                 self.schedule.expression)
        return nxt

    def _log_skipped(self, started: datetime, end: datetime) -> None:
        """Ticks that came while the run was going: runs never overlap, so these were skipped."""
        assert self.schedule is not None
        missed = list(takewhile(lambda t: t <= end, self.schedule.times_after(started)))
        if not missed:
            return
        shown = ", ".join(_iso(t) for t in missed[:5]) + (f" and {len(missed) - 5} more" if len(missed) > 5 else "")
        log.warning("skipped %d scheduled run(s) at %s: the run started at %s was still going", len(missed),
                    shown, _iso(self._local(started)))

    def _save_status(self) -> None:
        if self._health_file is None:
            return
        try:
            health.write(self._health_file, self.status)
        except ConfigError as exc:  # HEALTH_FILE became a device, a FIFO, a directory since the start
            log.warning("cannot write the health status file: %s", exc)
        except OSError as exc:
            log.warning("cannot write the health status file %s: %s", self._health_file, exc)


# --------------------------------------------------------------------------------------------------
# Commands


def _settings(env: Mapping[str, str]) -> tuple[bool, float]:
    return setting(env, "CRON_ENABLED"), setting(env, "SHUTDOWN_GRACE_SECONDS")


def add_log_file(config: Config) -> Path | None:
    """LOG_FILE for ``serve`` and ``backup`` alike (default /var/log/pg-backup.log where writable; off,
    none or empty: no file), so a backup called from system cron leaves the same log as the runner."""
    path = logs.log_file_path(config.env.get("LOG_FILE"))
    if path is None:
        return None
    try:
        logs.add_file(path, config.log_format)
    except OSError as exc:
        raise ConfigError(f"LOG_FILE: cannot write {str(path)!r} ({exc.strerror}). Fix: point it at a writable "
                          "file, mount a volume there, or set LOG_FILE=off.") from None
    return path


_health_file = health.file_for


def make_runner(config: Config, backup: BackupFn | None = None, **kwargs: Any) -> Runner:
    """A runner configured from the environment the configuration was read from."""
    env = config.env
    cron, grace = _settings(env)
    sched = schedule.parse(env.get("CRON_SCHEDULE"), config.timezone) if cron else None
    for conn in config.connections:  # a bad age recipient stops serve now (exit 2), not each run at its hour
        pipeline.age_recipients(config, conn)
    observer = kwargs.pop("observer", None) or progress.make_observer()
    bars = isinstance(observer, progress.BarObserver)  # a bar's total is the size on disk: list the sizes
    return Runner(
        backup=backup or functools.partial(backup_with_handler, sizes=bars),
        schedule=sched,
        timezone=config.timezone.key,
        observer=observer,
        pinger=health.Pinger(env.get("HEALTHCHECK_URL")),
        health_file=_health_file(env, check=True),
        grace=grace,
        monitor=kwargs.pop("monitor", None) or metrics.Monitor.from_env(env),
        **kwargs,
    )


def web_app(runner: Runner) -> webserver.App:
    """What HTTP_ADDR serves: the metrics and the page from the runner's history, and /healthz from its
    status, judged as ``pgbkp health`` judges the file (at the runner's clock)."""
    from pgbkp import statuspage, webserver

    monitor = runner.monitor or metrics.Monitor(None, None)
    clock = runner._clock
    return webserver.App(
        metrics=monitor.exposition,
        metrics_type=metrics.CONTENT_TYPE,
        healthz=lambda: health.evaluate(runner.status, clock()),
        page=lambda: statuspage.render(monitor.history.snapshot(), runner.status, clock()),
    )


def http_address(env: Mapping[str, str]) -> tuple[str, int] | None:
    """HTTP_ADDR: (host, port), or None when off."""
    address: tuple[str, int] | None = setting(env, "HTTP_ADDR")
    return address


def start_web(config: Config, runner: Runner) -> webserver.WebServer | None:
    """HTTP_ADDR: serve /metrics, /healthz and / while the runner runs (None when it is off)."""
    address = http_address(config.env)
    if address is None:
        return None
    metrics.require("HTTP_ADDR")
    from pgbkp import webserver

    server = webserver.start(address, web_app(runner))
    log.info("serving %s/metrics, /healthz and / (HTTP_ADDR)", server.url)
    return server


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    log_file = add_log_file(config)
    runner = make_runner(config)
    server = start_web(config, runner)
    runner.handle_signals()
    when = (f"then on CRON_SCHEDULE={runner.schedule.expression!r} in {runner.schedule.timezone.key}"
            if runner.schedule else "once (CRON_ENABLED=false)")
    log.info("pgbkp serve: backing up now, %s; log file: %s", when, log_file or "none")
    try:
        return runner.serve()
    finally:
        if server is not None:
            server.stop()
