"""The handler without Lambda: event -> configuration -> pipeline -> JSON summary.

``lambda_function`` (Powertools, boto3's Lambda client) and the local runner both call :func:`handle`,
so that a scheduled run behaves the same in Lambda and in a container. What differs is passed in an
:class:`Edge`: in Lambda an ``invoker`` re-invokes this function asynchronously (fan-out, time-budget
hand-off); without one, everything runs here, one connection after another.

Event contract (also in README.md, "Events"):

``{"connection": "<name or 0-based index>"}``
    Back up every database of that connection (minus ``ignore=``), each followed by its retention.
``{"connection": "...", "databases": ["a", "b"]}``
    Back up only those databases. One that does not exist (dropped since a hand-off named it) is skipped
    with a warning and listed under ``skipped``; the others are backed up.
``{}``, an EventBridge scheduled event (``"source"`` and ``"detail-type"`` keys; the rest is ignored),
or any event without ``connection``
    Fan out: in Lambda, one asynchronous invocation ``{"connection": name}`` per connection, returning
    the names dispatched; elsewhere, every connection in turn, here.
``{"action": "verify", "connection": "...", ["databases": [...]]}``
    Restore-test the newest backups (``pgbkp.restore.verify``).

Any other key, a wrong type, an empty or non-string database list, an unknown action or connection is
an :class:`EventError` (a :class:`ConfigError`), raised before any work starts. Once work has started,
nothing raises for one database or connection: each failure is a failed result, and the others run.

``pgbkp backup`` passes a :class:`Request` instead of an event: the same path, plus what only a command
line can ask for (several connections, ``--dry-run``). No JSON event can carry those.

The store is the caller's: its :class:`Edge` says which storage each connection uses (the edges pass
``pipeline.StorageCache(S3Storage)``, tests a memory store), and may replace pg_dump with another
``pipeline.DumpSource``. Nothing here knows S3 or starts a process.

The 15-minute limit: before each database but the first of an invocation, if the time left is below
``TIME_SAFETY_MARGIN_SECONDS`` (120) plus the database's size on disk at ``TIME_ESTIMATE_MB_PER_SECOND``
(10), the rest is handed to a fresh invocation ``{"connection": name, "databases": [rest]}``. The first
database always starts, so every invocation makes progress and a chain of hand-offs cannot go on forever.
Mid-dump, when less than ``TIME_HARD_MARGIN_SECONDS`` (20) is left, the pipeline aborts the upload (no
multipart upload is left behind) and that database is reported as failed.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

from pgbkp import dispatch, notify, pipeline
from pgbkp.config import Config, ConfigError, Connection, load
from pgbkp.dispatch import TimeLimits
from pgbkp.output import OK_STATUSES
from pgbkp.pipeline import DatabaseResult, DumpSource, Job, MultiObserver, NullObserver, Observer
from pgbkp.redact import redact
from pgbkp.storage import Storage

log = logging.getLogger(__name__)

EVENT_KEYS = frozenset({"action", "connection", "databases"})
ACTIONS = ("backup", "verify")
#: An EventBridge (rule or Scheduler) event carries these; it means "the schedule fired": fan out.
SCHEDULED_EVENT_KEYS = frozenset({"source", "detail-type"})
#: Either one set (``sam local`` sets the second) makes the fan-out run in-process even where
#: AWS_LAMBDA_FUNCTION_NAME is set, so a local invoke never calls real AWS.
LOCAL_MARKERS = ("PGBKP_LOCAL_RUNNER", "AWS_SAM_LOCAL")

class EventError(ConfigError):
    """The event is malformed; nothing was started."""


class BackupFailedError(Exception):
    """Some database failed (the others were finished first); ``summary`` is the full result."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


class DispatchError(Exception):
    """An asynchronous self-invocation (fan-out or hand-off) was refused."""


@dataclass(frozen=True)
class Request:
    """A validated event, or what ``pgbkp backup`` asks for (``connections`` and ``dry_run`` are set only
    by the command line: no event can carry them)."""

    action: str = "backup"
    connection: str | int | None = None
    databases: tuple[str, ...] | None = None
    #: Several connections by name or index (the CLI's repeated ``--connection``).
    connections: tuple[str | int, ...] = ()
    #: Plan, list what retention would delete, and change nothing.
    dry_run: bool = False

    @property
    def fan_out(self) -> bool:
        return self.connection is None and not self.connections


def parse_event(event: object) -> Request:
    """Check the event's shape (not yet its connection: that needs the configuration)."""
    if isinstance(event, Request):  # from pgbkp backup, already shaped; JSON can never produce one
        return event
    if event is None:
        return Request()
    if not isinstance(event, Mapping):
        raise EventError(f"event: expected a JSON object, got {type(event).__name__}. "
                         'Fix: send {} or {"connection": "<name>"}.')
    if event.keys() >= SCHEDULED_EVENT_KEYS:
        return Request()
    unknown = sorted(str(k) for k in event.keys() - EVENT_KEYS)
    if unknown:
        raise EventError(f"event: unknown key {', '.join(map(repr, unknown))}. "
                         f"Fix: use only {', '.join(sorted(EVENT_KEYS))}.")
    action = event.get("action", "backup")
    if action not in ACTIONS:
        raise EventError(f"event: field 'action': {action!r} is not an action. Fix: use one of {', '.join(ACTIONS)}.")
    connection = event.get("connection")
    if connection is not None:
        valid = (isinstance(connection, str) and connection.strip()) or (
            isinstance(connection, int) and not isinstance(connection, bool) and connection >= 0)
        if not valid:
            raise EventError(f"event: field 'connection': {connection!r} is not a connection. "
                             "Fix: give its name (prefix or host) or its 0-based index.")
    databases = event.get("databases")
    if databases is not None:
        if (not isinstance(databases, list) or not databases
                or not all(isinstance(d, str) and d for d in databases)):
            raise EventError(f"event: field 'databases': {databases!r} is not a list of database names. "
                             'Fix: e.g. ["app", "analytics"], or leave it out for all databases.')
        if connection is None:
            raise EventError("event: field 'databases' needs 'connection'. Fix: add the connection's name.")
        databases = tuple(dict.fromkeys(databases))
    if action == "verify" and connection is None:
        raise EventError("event: action 'verify' needs 'connection'. Fix: add the connection's name.")
    return Request(action, connection, databases)


def running_in_lambda(env: Mapping[str, str]) -> bool:
    """In Lambda proper (not ``sam local``, not the local runner in the same image)."""
    return bool(env.get("AWS_LAMBDA_FUNCTION_NAME")) and not any(env.get(m) for m in LOCAL_MARKERS)


class Invoker(Protocol):
    """Starts an asynchronous invocation of this very function with ``payload`` (raises on refusal)."""

    def __call__(self, payload: dict[str, Any]) -> None: ...


@dataclass
class Edge:
    """What the caller plugs in: the store, and what differs between Lambda, ``pgbkp serve`` and
    ``pgbkp backup``. Beyond the store, the defaults are the local runner's: no Lambda, no Powertools."""

    #: The store of each connection; the edge chooses it (``pipeline.StorageCache(S3Storage)``).
    storage_for: Callable[[Connection], Storage]
    #: Where dumps and database lists come from; None: pg_dump and psql (``pipeline.PgDumpSource``).
    source: DumpSource | None = None
    invoker: Invoker | None = None
    observers: Sequence[Observer] = ()
    #: Wraps each pipeline stage (Lambda: ``tracer.capture_method``).
    wrap: Callable[[Any], Any] = field(default=lambda fn: fn)
    #: Called with each final result, retention included (Lambda: EMF metrics).
    report: Callable[[DatabaseResult], None] = field(default=lambda result: None)
    #: Context manager that adds ``{"connection": name}`` to every log line inside it.
    scope: Callable[[Mapping[str, str]], AbstractContextManager[Any]] = field(default=lambda keys: nullcontext())
    #: The caller's own stop request (the runner's shutdown): no new database starts, a dump in flight aborts.
    should_stop: Callable[[], bool] = field(default=lambda: False)
    #: Lambda with the template's Fargate resources: start an ECS Fargate task that backs up this job's
    #: database and return the task's ARN (raise if none started). None: Fargate is off.
    fargate: Callable[[Job], str] | None = None
    #: The observers show each database's size on disk (a progress bar's total): list the sizes. They cost
    #: a pg_database_size() per database, so only an edge that shows them, a dry run and Lambda's clock ask.
    sizes: bool = False


class _Budget(NullObserver):
    """Lambda's clock: decides whether the next database may start and whether the dumps must stop.

    Several databases may be in flight (DATABASE_CONCURRENCY): they share the throughput the estimate
    assumes, so a new one must fit with what the ones in flight still need (their whole estimates,
    counted as if they had just begun: on the safe side). A stop stops them all."""

    def __init__(self, context: Any, limits: TimeLimits) -> None:
        self.context, self.limits = context, limits
        self.begun = 0
        self.in_flight: dict[int, Job] = {}  # by id(job): the observer hears from several threads
        self.tripped: tuple[list[Job], float] | None = None
        self._lock = threading.Lock()

    def left(self) -> float | None:
        remaining = getattr(self.context, "get_remaining_time_in_millis", None)
        return None if remaining is None else remaining() / 1000

    def before_job(self, job: Job, rest: list[Job]) -> bool:
        left = self.left()
        with self._lock:
            flying = list(self.in_flight.values())
        need = self.limits.safety_margin + sum(self.limits.dump_seconds(j.size_estimate) for j in [*flying, job])
        if left is not None and left < need:
            if self.begun:
                log.info("%.0f s left, %s needs about %.0f s (with the %d database(s) in flight): handing %d "
                         "database(s) to a new invocation", left, job.database, need, len(flying), len(rest),
                         extra={"connection": job.connection.name})
                return False
            log.warning("%.0f s left, %s may need about %.0f s; starting it anyway (first of this invocation)",
                        left, job.database, need, extra={"connection": job.connection.name})
        self.begun += 1
        return True

    def should_stop(self) -> bool:
        left = self.left()
        if left is None or left >= self.limits.hard_margin:
            return False
        with self._lock:
            if self.in_flight and self.tripped is None:
                self.tripped = (list(self.in_flight.values()), left)
        return True

    # Observer: the pipeline tells us which jobs are in flight.
    def started(self, job: Job) -> None:
        with self._lock:
            self.in_flight[id(job)] = job

    def finished(self, job: Job, result: DatabaseResult) -> None:
        with self._lock:
            self.in_flight.pop(id(job), None)


def summarize(result: DatabaseResult) -> dict[str, Any]:
    """One database's entry in the result, the same for Lambda, ``pgbkp serve`` and ``pgbkp backup --json``
    (README.md, "Result"): ``DatabaseResult.as_dict()`` (connection, database, bucket, key, status,
    raw_bytes, object_bytes, seconds, error, size_estimate), ``bytes`` (object_bytes under the name Lambda
    results have always used) and what retention did (deleted keys with their reasons, how many kept, and
    the ones it would have deleted but S3 Object Lock still holds)."""
    deleted = [{"key": a.key, "reasons": a.reasons, "done": a.done} for a in result.retention if a.action == "delete"]
    locked = [{"key": a.key, "reasons": a.reasons} for a in result.retention
              if a.action == "keep" and a.reasons and a.reasons[0].startswith(pipeline.LOCKED_REASONS)]
    return {
        **result.as_dict(),
        "bytes": result.object_bytes,
        "retention": {"deleted": deleted, "kept": sum(a.action == "keep" for a in result.retention),
                      "locked": locked},
    }


def handle(event: object, context: Any = None, *, edge: Edge, config: Config | None = None,
           env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run one event and return its JSON-able summary; raise BackupFailedError if any database failed.

    ``config`` is loaded from ``env`` (default: the process environment) unless given. ``context`` is
    Lambda's (anything with ``get_remaining_time_in_millis``) or None for no time limit. ``edge`` is the
    caller's: its store, observers and stop request.
    """
    request = parse_event(event)
    config = config or load(env)
    # Every setting a run reads is checked here, before any work: a mistake is a ConfigError (exit 2).
    limits = TimeLimits.from_env(config.env)
    pipeline.lock_wait_timeout(config)
    if request.action != "verify":  # age recipients (pyrage) and ZIP_PASSWORD; verify needs an identity instead
        pipeline.check_encryption(config)
    notifier = notify.plan(config) if not request.dry_run else notify.Notifier()
    if request.fan_out:
        if edge.invoker is not None and request.databases is None and not request.dry_run:
            return _dispatch(config, edge.invoker)
        connections = list(config.connections)
    else:
        refs = request.connections or (request.connection,)
        by_index = {c.index: c for c in (_connection(config, ref) for ref in refs if ref is not None)}
        connections = list(by_index.values())
    if request.action == "verify":
        try:
            summary = _verify(config, connections[0], request.databases, edge)
        except BackupFailedError as exc:
            notifier.send(exc.summary, time_left=_time_left(context), should_stop=edge.should_stop)
            raise
        notifier.send(summary, time_left=_time_left(context), should_stop=edge.should_stop)
        return summary

    results: list[DatabaseResult] = []
    skipped: list[pipeline.Skipped] = []
    handed_off: list[dict[str, Any]] = []
    for conn in connections:
        if edge.should_stop():  # do not even connect to list the databases of what will not run
            results.append(DatabaseResult(conn.name, "*", error="not started: the run was asked to stop"))
            continue
        with edge.scope({"connection": conn.name}):
            try:
                done, deferred, skips = _backup_connection(config, conn, request, context, edge, limits)
            except ConfigError as exc:  # work has started: this connection fails, the others still run
                log.error("%s", exc, extra={"connection": conn.name})
                done, deferred, skips = [DatabaseResult(conn.name, "*", error=redact(str(exc)))], [], []
            if deferred:
                payload, not_started = _hand_off(conn, deferred, edge)
                handed_off += [payload] if payload else []
                done += not_started
            for r in done:
                edge.report(r)
            results += done
            skipped += skips
    summary = {
        "ok": all(r.status in OK_STATUSES for r in results),
        "action": "backup",
        "connections": [c.name for c in connections],
        "results": [summarize(r) for r in results],
        "skipped": [s.as_dict() for s in skipped],
        "handed_off": handed_off,
    }
    notifier.send(summary, time_left=_time_left(context), should_stop=edge.should_stop)  # one per run; never raises
    failed = [r for r in results if r.status not in OK_STATUSES]
    if failed:
        lines = "; ".join(f"{r.connection}/{r.database}: {r.error}" for r in failed)
        raise BackupFailedError(f"{len(failed)} of {len(results)} database backups failed: {lines}", summary)
    return summary


#: Seconds of Lambda's remaining time that waiting for notifications leaves, to return the result.
NOTIFY_RESERVE_SECONDS = 2.0


def _time_left(context: Any) -> float | None:
    """How long notifications may hold the run: None without a Lambda context (NOTIFY_TIMEOUT_SECONDS)."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return None if remaining is None else remaining() / 1000 - NOTIFY_RESERVE_SECONDS


def _connection(config: Config, ref: str | int) -> Connection:
    try:
        return config.connection(ref)
    except ConfigError as exc:
        if "Fix:" in str(exc):
            raise
        raise ConfigError(f"{exc}. Fix: give a connection's name (its prefix or host) or its 0-based index.") from None


def _backup_connection(config: Config, conn: Connection, request: Request, context: Any, edge: Edge,
                       limits: TimeLimits) -> tuple[list[DatabaseResult], list[Job], list[pipeline.Skipped]]:
    """Plan and run one connection; returns its results, the jobs the time budget did not start, and the
    databases skipped."""
    budget = _Budget(context, limits) if context is not None else None
    timed = callable(getattr(context, "get_remaining_time_in_millis", None))  # the budget estimates from sizes
    the_plan = edge.wrap(pipeline.plan)(config, connections=[conn.index], databases=request.databases,
                                        source=edge.source, sizes=edge.sizes or request.dry_run or timed)
    dispatched: list[DatabaseResult] = []
    if budget is not None and not request.dry_run:
        the_plan, dispatched = _send_to_fargate(config, conn, the_plan, edge)
    run = edge.wrap(pipeline.run)(
        config, the_plan,
        storage_for=edge.storage_for,
        source=edge.source,
        observer=MultiObserver([budget, *edge.observers] if budget else edge.observers),
        should_stop=lambda: edge.should_stop() or (budget is not None and budget.should_stop()),
        before_job=budget.before_job if budget else lambda job, rest: True,
        dry_run=request.dry_run,
    )
    results = dispatched + list(run.results)
    if budget and budget.tripped:
        tripped, left = budget.tripped
        stopped = {(job.connection.name, job.database) for job in tripped}
        for r in results:
            if (r.connection, r.database) in stopped and r.status != "ok":
                r.error = (f"{r.error} (Lambda time limit: {left:.0f} s left, under TIME_HARD_MARGIN_SECONDS="
                           f"{budget.limits.hard_margin:.0f}; the upload was aborted. Fix: raise "
                           "TIME_SAFETY_MARGIN_SECONDS or lower TIME_ESTIMATE_MB_PER_SECOND, or back this "
                           "database up with the local runner if one invocation cannot hold it)")
    if run.deferred and budget and not budget.begun:
        # Not even the first database could start: a new invocation would do the same, forever.
        left = budget.left() or 0.0
        reason = (f"not started, {left:.0f} s left is under TIME_HARD_MARGIN_SECONDS="
                  f"{budget.limits.hard_margin:.0f}. Fix: raise the function's timeout")
        return results + [_not_started(job, reason) for job in run.deferred], [], run.skipped
    return results, list(run.deferred), run.skipped


@dataclass
class DispatchedResult(DatabaseResult):
    """A database sent to an ECS Fargate task. The task backs it up and reports the outcome itself (its
    logs, EMF metrics and exit code), so this result only says where it went: no key (the task names its
    object when it starts), no bytes."""

    dispatched_to: str = "fargate"
    task_arn: str = ""


def _send_to_fargate(config: Config, conn: Connection, the_plan: pipeline.Plan,
                     edge: Edge) -> tuple[pipeline.Plan, list[DatabaseResult]]:
    """In Lambda, before any dump: a database whose dump cannot fit one fresh invocation, however often the
    rest is handed on, goes to an ECS Fargate task (``edge.fargate``) instead; the plan keeps the others.
    Without Fargate it stays, with a warning naming it and the template parameter to set."""
    decided = dispatch.plan(conn.name, [dispatch.Database(j.database, j.size_estimate) for j in the_plan.jobs],
                            limits=dispatch.TimeLimits.from_env(config.env), fargate=edge.fargate is not None)
    for warning in decided.warnings:
        log.warning("%s", warning, extra={"connection": conn.name})
    if edge.fargate is None or not decided.to_fargate:
        return the_plan, []
    leaving = set(decided.to_fargate)
    results = [_start_task(job, edge.fargate) for job in the_plan.jobs if job.database in leaving]
    return dataclasses.replace(the_plan, jobs=[j for j in the_plan.jobs if j.database not in leaving]), results


def _start_task(job: Job, start: Callable[[Job], str]) -> DatabaseResult:
    """One database to Fargate; a refusal fails that database only (it was not started anywhere)."""
    ctx = {"connection": job.connection.name, "database": job.database}
    try:
        arn = start(job)
    except Exception as exc:  # dispatch.FargateDispatchError, or the edge's client failing to be made
        text = str(exc) if isinstance(exc, dispatch.FargateDispatchError) else (
            f"run ECS task for {job.connection.name}/{job.database}: {type(exc).__name__}: {exc}")
        result = DatabaseResult(job.connection.name, job.database, job.bucket, error=redact(
            f"{text}. Not backed up. Fix: the function's role needs ecs:RunTask on FARGATE_TASK_DEFINITION and "
            "iam:PassRole on its two roles (template.yaml grants both), and ECS must have Fargate capacity in "
            "FARGATE_SUBNETS"), size_estimate=job.size_estimate)
        log.error("%s", result.error, extra=ctx)
        return result
    log.info("sent %s to ECS Fargate (about %d bytes on disk, more than one invocation can dump): task %s",
             job.database, job.size_estimate, arn, extra=ctx)
    return DispatchedResult(job.connection.name, job.database, job.bucket, status="dispatched",
                            size_estimate=job.size_estimate, task_arn=arn)


def _hand_off(conn: Connection, deferred: list[Job], edge: Edge) -> tuple[dict[str, Any] | None,
                                                                          list[DatabaseResult]]:
    """Give the databases not started to a fresh invocation (the payload sent), or else fail them."""
    payload = {"connection": conn.name, "databases": [j.database for j in deferred]}
    reason = "not started: out of time, and no Lambda function to hand it to"
    if edge.should_stop():
        reason = "not started: the run was asked to stop"
    elif edge.invoker is not None:
        try:
            edge.invoker(payload)
            log.info("handed %d database(s) to a new invocation: %s", len(deferred),
                     ", ".join(payload["databases"]), extra={"connection": conn.name})
            return payload, []
        except Exception as exc:
            reason = f"hand-off to a new invocation failed: {redact(str(exc))}"
    return None, [_not_started(job, reason) for job in deferred]


def _not_started(job: Job, reason: str) -> DatabaseResult:
    result = DatabaseResult(job.connection.name, job.database, job.bucket, job.key, error=f"backup {job.url}: {reason}",
                            kind=job.kind)
    log.error("%s", result.error, extra={"connection": job.connection.name, "database": job.database})
    return result


def _dispatch(config: Config, invoker: Invoker) -> dict[str, Any]:
    """Fan out in Lambda: one asynchronous invocation per connection, each with its own 15 minutes."""
    dispatched, errors = [], []
    for conn in config.connections:
        try:
            invoker({"connection": conn.name})
            dispatched.append(conn.name)
        except Exception as exc:
            errors.append(f"{conn.name}: {redact(str(exc))}")
    if errors:
        message = (f"invoke this function for {len(errors)} connection(s) failed: {'; '.join(errors)} "
                   f"(dispatched: {', '.join(dispatched) or 'none'})")
        log.error("fan-out: %s", message)
        raise DispatchError(message)
    log.info("dispatched %d connection(s): %s", len(dispatched), ", ".join(dispatched))
    return {"ok": True, "action": "fan-out", "dispatched": dispatched}


def _verify(config: Config, conn: Connection, databases: Sequence[str] | None, edge: Edge) -> dict[str, Any]:
    """Restore-test the newest backup of each database (into a scratch database that is dropped after)."""
    from pgbkp import restore  # lazily: backups do not need the restore engine

    with edge.scope({"connection": conn.name}):
        results = edge.wrap(restore.verify)(config, conn, databases=list(databases) if databases else None,
                                            scratch_url=None, storage=edge.storage_for(conn))
    rows = [r.as_dict() for r in results]
    summary = {"ok": bool(rows) and all(r.ok for r in results), "action": "verify", "connections": [conn.name],
               "results": rows}
    if not rows:
        raise BackupFailedError(f"verify {conn.name}: no backups found to verify", summary)
    failed = [r for r in results if not r.ok]
    if failed:
        lines = "; ".join(f"{r.connection}/{r.database}: {r.error}" for r in failed)
        raise BackupFailedError(f"{len(failed)} of {len(rows)} restore tests failed: {lines}", summary)
    return summary
