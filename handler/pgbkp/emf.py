"""The Lambda function's per-database metrics as CloudWatch embedded metric format (EMF) lines, for
``pgbkp backup`` in an ECS Fargate task.

In Lambda, Powertools prints these documents (``lambda_function.report``). The Fargate task runs the
``pgbkp`` command instead, without Powertools (.importlinter keeps it at the Lambda edge), and prints the
same documents itself: the awslogs driver sends stdout to CloudWatch Logs with PutLogEvents, and CloudWatch
extracts EMF from any log event that carries the ``_aws`` member (no header or agent needed). So the
``-backup-failed`` alarm (``SUM(BackupFailed)`` over the namespace) counts a failed task's database as it
counts a failed invocation's. tests/test_emf.py holds the two outputs side by side. After its databases the
task prints one more document, ``DatabasesBackedUp`` with the ``service`` dimension only, as each invocation
does: the template's staleness alarm reads that series, and a database backed up by a task is a backup too.

Pure: names and numbers in, one JSON line out; the caller prints it.
"""

from __future__ import annotations

import json
import time

NAMESPACE = "pgbkp"
#: The one dimension set of a database's document (lambda_function's: Powertools adds ``service``).
DIMENSIONS = ("connection", "database", "service")
#: Name and unit of each metric, in the order lambda_function.report adds them.
METRICS = (("BackupSucceeded", "Count"), ("BackupFailed", "Count"), ("BackupBytes", "Bytes"),
           ("BackupSeconds", "Seconds"), ("RetentionDeleted", "Count"))


def document(*, connection: str, database: str, service: str, ok: bool, object_bytes: int, seconds: float,
             retention_deleted: int, timestamp_ms: int | None = None) -> str:
    """One database's EMF document, one line: the dimensions and metrics lambda_function.report emits."""
    values = (int(ok), int(not ok), object_bytes, seconds, retention_deleted)
    doc: dict[str, object] = {
        "_aws": {
            "Timestamp": int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
            "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": [list(DIMENSIONS)],
                                   "Metrics": [{"Name": name, "Unit": unit} for name, unit in METRICS]}],
        },
        "connection": connection,
        "database": database,
        "service": service,
    }
    doc.update({name: [float(value)] for (name, _unit), value in zip(METRICS, values, strict=True)})
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


#: The per-run count of databases backed up, with the ``service`` dimension only (the staleness alarm's series).
BACKED_UP = "DatabasesBackedUp"


def backed_up(*, service: str, count: int, timestamp_ms: int | None = None) -> str:
    """One run's ``DatabasesBackedUp`` document, one line, as the function's invocation metrics carry it."""
    doc: dict[str, object] = {
        "_aws": {
            "Timestamp": int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
            "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": [["service"]],
                                   "Metrics": [{"Name": BACKED_UP, "Unit": "Count"}]}],
        },
        "service": service,
        BACKED_UP: [float(count)],
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
