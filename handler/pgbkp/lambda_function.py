"""The AWS Lambda entry point (``pgbkp.lambda_function.lambda_handler``): Powertools around handler_core.

Everything Lambda-specific lives here and only here: Powertools Logger / Metrics / Tracer, secrets
from Secrets Manager or SSM, and boto3's Lambda client for the asynchronous self-invocations (fan-out
and time-budget hand-off). It is created by :func:`lambda_client`, the one seam the tests replace. The
style guide keeps boto3 in ``storage/`` for the engine; this edge is outside the engine, and the
engine's storage interface has no business invoking functions.

The event contract is in :mod:`pgbkp.handler_core`. Metrics (namespace ``pgbkp``): one EMF document per
database, with the dimensions ``connection``, ``database`` and ``service`` (one dimension set, so a
Metrics Insights ``SUM`` over the namespace counts each backup once, as the template's alarm does):
``BackupSucceeded``, ``BackupFailed`` (Count), ``BackupBytes`` (Bytes, the stored object),
``BackupSeconds`` (Seconds), ``RetentionDeleted`` (Count); for a database sent to ECS Fargate,
``BackupDispatched`` (Count) instead, since its task reports the others (``pgbkp.emf``). Per invocation, with
``service`` only: ``ConnectionsDispatched``, ``DatabasesHandedOff`` and ``DatabasesBackedUp`` (Count), and
Powertools' ``ColdStart``. ``DatabasesBackedUp`` (0 when none) is one series whatever the databases, which the
template's staleness alarm needs: Metrics Insights alarms see only the last 3 hours.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

from pgbkp import dispatch, handler_core, notify, settings_secrets
from pgbkp.config import ConfigError
from pgbkp.logs import RedactingFilter
from pgbkp.pipeline import DatabaseResult, Job, NullObserver, StorageCache
from pgbkp.redact import redact
from pgbkp.storage.s3 import S3Storage, make_client

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or "pgbkp"
NAMESPACE = "pgbkp"
PACKAGE_LOGGER = "pgbkp"

#: LOG_LEVEL is pgbkp's own setting (the CLI and runner use it too); an invalid one is left to the config check.
_LEVEL = os.environ.get("LOG_LEVEL", "").strip().upper()

logger = Logger(service=SERVICE, level=_LEVEL if _LEVEL in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL") else None)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
tracer = Tracer(service=SERVICE)


class _EdgeRedactingFilter(RedactingFilter):
    """RedactingFilter, keeping the scrubbed traceback as an ``exception`` key (Powertools reads only exc_info)."""

    def filter(self, record: logging.LogRecord) -> bool:
        super().filter(record)
        if record.exc_text:
            record.exception = record.exc_text
        return True


logger.registered_handler.addFilter(_EdgeRedactingFilter())


def _route_package_logs() -> None:
    """Send the ``pgbkp.*`` logger tree (pipeline, postgres, storage) through the Powertools handler.

    Powertools' Logger (service ``pgbkp``) already put its handler on the ``pgbkp`` logger at import;
    this, done per invocation, makes that handler the only one and stops propagation. Idempotent, and
    it undoes a CLI-style ``logs.setup`` made earlier in the same process."""
    handler = logger.registered_handler
    package = logging.getLogger(PACKAGE_LOGGER)
    for other in [h for h in package.handlers if h is not handler]:
        package.removeHandler(other)
    if handler not in package.handlers:
        package.addHandler(handler)
    package.setLevel(logger.log_level)
    package.propagate = False  # Lambda's root handler would print every line a second time


@functools.cache
def lambda_client() -> Any:
    """boto3's Lambda client, made once per container (tests put a fake in its place)."""
    import boto3

    return boto3.client("lambda")


@functools.cache
def ecs_client() -> Any:
    """boto3's ECS client (RunTask for a database too big for one invocation), made once per container."""
    import boto3

    return boto3.client("ecs")


def make_fargate(settings: dispatch.FargateSettings) -> Callable[[Job], str]:
    """Start the template's Fargate task for one database; its ARN, or FargateDispatchError."""

    def start(job: Job) -> str:
        return str(dispatch.run_task(ecs_client(), settings, job.connection.name, job.database)["task_arn"])

    return start


#: One S3 client per distinct settings for the life of the container: warm invocations reuse it (each
#: costs 0.12-0.19 s to make). Each invocation still builds its own S3Storage around it (per-run state).
s3_client = functools.cache(make_client)


def invoke_fix(function_name: str) -> str:
    """What to do when a self-invocation fails. The usual cause off AWS: the image run by ``docker run``,
    whose runtime interface emulator sets AWS_LAMBDA_FUNCTION_NAME as Lambda does (but not AWS_SAM_LOCAL),
    with no region, no credentials and no such function behind it."""
    return ("Fix: outside AWS Lambda (docker run of the image, under the runtime interface emulator) set "
            "PGBKP_LOCAL_RUNNER=1 to back up the connections in this process; in Lambda, check that the "
            f"function's role may lambda:InvokeFunction {function_name}.")


def make_invoker(function_name: str) -> handler_core.Invoker:
    """Asynchronous invocation of ``function_name`` (InvocationType Event: Lambda answers 202 and queues it)."""

    def invoke(payload: dict[str, Any]) -> None:
        what = f"invoke {function_name} {json.dumps(payload)}"
        try:
            response = lambda_client().invoke(FunctionName=function_name, InvocationType="Event",
                                              Payload=json.dumps(payload).encode())
        except Exception as exc:  # botocore's: NoRegionError, NoCredentialsError, ClientError, ...
            reason = f"{type(exc).__name__}: {str(exc).rstrip('.')}"
            raise handler_core.DispatchError(f"{what}: {reason}. {invoke_fix(function_name)}") from None
        status = response.get("StatusCode")
        if status != 202:
            raise handler_core.DispatchError(f"{what}: status {status}. {invoke_fix(function_name)}")

    return invoke


@contextmanager
def log_keys(keys: Mapping[str, str]) -> Iterator[None]:
    logger.append_keys(**keys)
    try:
        yield
    finally:
        logger.remove_keys(list(keys))


class EdgeObserver(NullObserver):
    """Per database: a ``database`` log key and an X-Ray subsegment, from its start to its result.

    Several databases may be in flight (DATABASE_CONCURRENCY), each on a thread of its own that calls
    both ``started`` and ``finished``: the log key is the thread's own (Powertools' thread-safe keys),
    and each database's subsegment is closed by its own result, not by another's."""

    def __init__(self) -> None:
        self._open: dict[int, ExitStack] = {}

    def started(self, job: Job) -> None:
        logger.thread_safe_append_keys(database=job.database)
        stack = self._open[id(job)] = ExitStack()
        subsegment = stack.enter_context(tracer.provider.in_subsegment(f"## backup {job.database}"[:200]))
        if subsegment is not None:  # X-Ray gives None where a thread has no segment to attach to
            subsegment.put_annotation("connection", job.connection.name)
            subsegment.put_annotation("database", job.database)

    def finished(self, job: Job, result: DatabaseResult) -> None:
        stack = self._open.pop(id(job), None)
        if stack is not None:
            stack.close()
        logger.thread_safe_remove_keys(["database"])


def report(result: DatabaseResult) -> None:
    """One EMF document for one database, flushed at once: EMF gives a document one set of dimension
    values, so each database needs its own (the invocation's metrics go out at the end, without them)."""
    ok = result.status == "ok"
    try:
        metrics.add_dimension("connection", result.connection)
        metrics.add_dimension("database", result.database)
        if result.status == "dispatched":  # its Fargate task emits the outcome (pgbkp.emf), once
            metrics.add_metric("BackupDispatched", MetricUnit.Count, 1)
            metrics.flush_metrics()
            return
        metrics.add_metric("BackupSucceeded", MetricUnit.Count, int(ok))
        metrics.add_metric("BackupFailed", MetricUnit.Count, int(not ok))
        metrics.add_metric("BackupBytes", MetricUnit.Bytes, result.object_bytes)
        metrics.add_metric("BackupSeconds", MetricUnit.Seconds, result.seconds)
        metrics.add_metric("RetentionDeleted", MetricUnit.Count,
                           sum(a.action == "delete" and a.done for a in result.retention))
        metrics.flush_metrics()
    finally:
        metrics.clear_metrics()


def edge(env: Mapping[str, str], context: Any) -> handler_core.Edge:
    """The Lambda edge: the S3 store (one client per distinct S3 settings, kept across warm invocations),
    an invoker when really in Lambda, tracing, metrics, log keys."""
    invoker = fargate = None
    if handler_core.running_in_lambda(env):
        name = getattr(context, "function_name", None) or env["AWS_LAMBDA_FUNCTION_NAME"]
        invoker = make_invoker(name)
        settings = dispatch.FargateSettings.from_env(env)  # None without the template's Fargate resources
        fargate = make_fargate(settings) if settings else None
    # The time budget stops a backup's own requests (the upload's, through the pipeline's should_stop),
    # so a request stalled on the store cannot outlast the invocation; the others need no stop here.
    stores = StorageCache(lambda settings: S3Storage(settings, client=s3_client(settings)))
    return handler_core.Edge(storage_for=stores, invoker=invoker, observers=[EdgeObserver()],
                             wrap=tracer.capture_method, report=report, scope=log_keys, fargate=fargate)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    _route_package_logs()
    summary: Mapping[str, Any] = {}
    env: Mapping[str, str] = os.environ
    try:
        env = settings_secrets.resolve(os.environ)
        summary = handler_core.handle(event, context, env=env, edge=edge(env, context))
    except handler_core.BackupFailedError as exc:
        summary = exc.summary
        logger.error("failed", extra={"summary": summary})
        raise
    except (ConfigError, handler_core.DispatchError) as exc:
        # The runtime reports the exception in plain text only: this is the JSON line queries and alarms find.
        # ``extra`` bypasses the redacting filter, so the message (built without secrets) is scrubbed here too.
        logger.error("failed", extra={"error": redact(str(exc)), "error_type": type(exc).__name__})
        if isinstance(exc, ConfigError) and not isinstance(exc, handler_core.EventError):
            left = context.get_remaining_time_in_millis() / 1000 - 2 if context is not None else None
            notify.config_failed(env, str(exc), time_left=left)
        raise
    except Exception:
        logger.exception("failed unexpectedly")
        raise
    finally:
        _count_invocation(summary)
    logger.info("done", extra={"summary": summary})
    return dict(summary)


def _count_invocation(summary: Mapping[str, Any]) -> None:
    metrics.add_metric("ConnectionsDispatched", MetricUnit.Count, len(summary.get("dispatched", [])))
    metrics.add_metric("DatabasesHandedOff", MetricUnit.Count,
                       sum(len(h["databases"]) for h in summary.get("handed_off", [])))
    metrics.add_metric("DatabasesBackedUp", MetricUnit.Count,
                       sum(r.get("status") == "ok" for r in summary.get("results", [])))
