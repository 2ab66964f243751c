"""The Fargate task reports like the function: ``pgbkp backup`` in an ECS task prints, per database, the
EMF document the Lambda function's Powertools prints (same namespace, dimensions, metric names and
units), so the template's failure alarm counts both; and it exits non-zero when a backup failed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pgbkp import cli, dispatch, lambda_function
from pgbkp.pipeline import DatabaseResult, RetentionAction
from tests.helpers import all_keys, make_bucket, run_cli
from tests.servers import PgCluster, S3Server

ECS = {cli.ECS_MARKER: "http://169.254.170.2/v4/0123456789abcdef-0123456789"}


def _emf_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith('{"_aws"')]


def _without_time(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "_aws": {k: v for k, v in doc["_aws"].items() if k != "Timestamp"}}


@pytest.mark.parametrize("result", [
    DatabaseResult("main", "app", "b", "k", "ok", 1000, 321, 1.25,
                   retention=[RetentionAction("old1", "delete", [], True), RetentionAction("old2", "delete", []),
                              RetentionAction("new", "keep", [])]),
    DatabaseResult("main", "naïve db", "b", "k", "failed", 10, 0, 0.5, error="pg_dump failed"),
], ids=["ok", "failed"])
def test_the_task_prints_the_document_the_function_prints(result: DatabaseResult,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    lambda_function.report(result)
    [function_doc] = _emf_lines(capsys.readouterr().out)
    cli.emf_report("pgbkp")(result)
    out = capsys.readouterr().out
    [task_doc] = _emf_lines(out)
    assert out.count("\n") == 1  # one line per document: one CloudWatch log event
    assert _without_time(task_doc) == _without_time(function_doc)
    assert isinstance(task_doc["_aws"]["Timestamp"], int)


@pytest.mark.parametrize(("env", "on"), [
    ({}, False), (ECS, True), ({**ECS, "PGBKP_EMF": "off"}, False), ({"PGBKP_EMF": "stdout"}, True),
    ({"PGBKP_EMF": " AUTO "}, False), ({**ECS, "PGBKP_EMF": ""}, True),
])
def test_emf_is_on_in_an_ecs_task_or_when_asked(env: dict[str, str], on: bool) -> None:
    assert cli.emf_to_stdout(env) is on


def test_a_bad_emf_mode_is_a_configuration_error() -> None:
    with pytest.raises(cli.ConfigError) as exc:
        cli.emf_to_stdout({"PGBKP_EMF": "cloudwatch"})
    assert str(exc.value) == "PGBKP_EMF: 'cloudwatch' is not an EMF mode. Fix: use one of auto, stdout, off."


def test_the_tasks_command_backs_up_one_database_with_metrics_and_fails_loudly(pg: PgCluster, s3: S3Server) -> None:
    """The command the function gives the task (dispatch.task_command), run as the task runs it."""
    bucket = make_bucket(s3)
    env = {**s3.env(), **ECS, "PG_URLS": f"main|{pg.url()},gone|bucket=no-such-bucket-{bucket}|{pg.url()}",
           "S3_BUCKET": bucket, "TIMEZONE": "UTC", "LOG_FORMAT": "json", "LOG_FILE": "off"}

    ok = run_cli(dispatch.task_command("main", "postgres"), env)
    assert ok.returncode == 0, ok.stderr
    [doc, run] = _emf_lines(ok.stdout)
    assert _without_time(run) == {"_aws": {"CloudWatchMetrics": [{  # the staleness alarm's series
        "Namespace": "pgbkp", "Dimensions": [["service"]],
        "Metrics": [{"Name": "DatabasesBackedUp", "Unit": "Count"}]}]}, "service": "pgbkp", "DatabasesBackedUp": [1.0]}
    assert (doc["connection"], doc["database"], doc["service"]) == ("main", "postgres", "pgbkp")
    assert (doc["BackupSucceeded"], doc["BackupFailed"]) == ([1.0], [0.0])
    [key] = all_keys(s3, bucket)
    assert key.startswith("main/postgres/") and doc["BackupBytes"][0] > 0
    assert all(json.loads(line)["level"] for line in ok.stderr.splitlines())  # the logs: JSON lines, as in Lambda

    failed = run_cli(dispatch.task_command("gone", "postgres"), env)
    assert failed.returncode == 1  # ECS records the exit code; the EventBridge rule sends non-zero to the queue
    [doc, run] = _emf_lines(failed.stdout)
    assert (doc["connection"], doc["BackupSucceeded"], doc["BackupFailed"]) == ("gone", [0.0], [1.0])
    assert run["DatabasesBackedUp"] == [0.0]
