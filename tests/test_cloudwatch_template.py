"""template.yaml's dashboard and alarms read the metrics the Lambda handler really emits.

The handler runs (on the memory store, with a fake dump) and prints its EMF documents; the template is
read with CloudFormation's short forms. Every pgbkp metric the template names must be emitted under that
name with exactly those dimensions (a plain metric), or with at least the grouped ones (a Metrics Insights
query); a misspelt name or a dimension the handler does not send would be a silent empty graph or an
alarm that never fires. `make lint-infra` (sam validate --lint, cfn-lint) checks the rest.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from pgbkp import emf, handler_core, lambda_function
from pgbkp.storage.memory import MemoryStorage
from tests.fakes import FakeDatabase, FakeDumpSource, FakeLambdaContext
from tests.helpers import ROOT
from tests.test_deploy_manifests import _CfnLoader
from tests.test_handler_memory import BUCKET, ENV, old_backup

pytestmark = pytest.mark.usefixtures("forget_test_secrets")
QUERY = re.compile(r"SELECT (\w+)\((\w+)\) FROM (\w+)(?: GROUP BY ([\w, ]+))?$")


@pytest.fixture(autouse=True)
def _package_logging_restored() -> Iterator[None]:
    package = logging.getLogger("pgbkp")
    saved = (list(package.handlers), package.level, package.propagate)
    yield
    package.handlers[:], package.level, package.propagate = saved[0], saved[1], saved[2]


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load((ROOT / "template.yaml").read_text(encoding="utf-8"), Loader=_CfnLoader)
    return loaded


@pytest.fixture
def emitted(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> dict[str, set[tuple[str, ...]]]:
    """Metric name -> the dimension sets (sorted names) it was emitted with, from one real invocation:
    one database backed up (retention deleting an old one), one failing."""
    for name in ("AWS_LAMBDA_FUNCTION_NAME", "PGBKP_LOCAL_RUNNER", "AWS_SAM_LOCAL"):
        monkeypatch.delenv(name, raising=False)
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    store = MemoryStorage([BUCKET])
    old_backup(store, "app", 2020)
    source = FakeDumpSource({"main": [FakeDatabase("app", b"-- app\n"), FakeDatabase("bad", b"x", fail="gone")]})
    real_edge = lambda_function.edge

    def edge(env: Any, context: Any) -> handler_core.Edge:
        return dataclasses.replace(real_edge(env, context), storage_for=lambda conn: store, source=source)

    monkeypatch.setattr(lambda_function, "edge", edge)
    with pytest.raises(handler_core.BackupFailedError):
        lambda_function.lambda_handler({}, FakeLambdaContext())
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    found: dict[str, set[tuple[str, ...]]] = {}
    for doc in docs:
        [directive] = doc["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == lambda_function.NAMESPACE
        for dims in directive["Dimensions"]:
            assert all(doc[d] for d in dims)
            for metric in directive["Metrics"]:
                found.setdefault(metric["Name"], set()).add(tuple(sorted(dims)))
    [invocation] = [d for d in docs if "DatabasesBackedUp" in d]
    assert (invocation["DatabasesBackedUp"], invocation["service"]) == ([1.0], "pgbkp")  # app did, bad did not
    return found


def dashboard(template: dict[str, Any]) -> dict[str, Any]:
    body = template["Resources"]["BackupDashboard"]["Properties"]["DashboardBody"]["!Sub"][0]
    return dict(json.loads(re.sub(r"\$\{[^}]+\}", "x", body)))


def references(template: dict[str, Any]) -> tuple[set[tuple[str, tuple[str, ...]]], set[tuple[str, tuple[str, ...]]]]:
    """(plain metrics with their dimension names, Metrics Insights metrics with their GROUP BY) in namespace pgbkp."""
    plain, grouped = set(), set()
    queries = []
    for resource in template["Resources"].values():
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        props = resource["Properties"]
        if props.get("Namespace") == "pgbkp":
            plain.add((props["MetricName"], tuple(sorted(d["Name"] for d in props["Dimensions"]))))
        queries += [m["Expression"] for m in props.get("Metrics", []) if "Expression" in m]
    for widget in dashboard(template)["widgets"]:
        for line in widget["properties"].get("metrics", []):
            if isinstance(line[0], dict):
                queries.append(line[0]["expression"])
            elif line[0] == "pgbkp":
                names = [x for x in line[2:] if isinstance(x, str)]
                plain.add((line[1], tuple(sorted(names[0::2]))))
    for q in queries:
        m = QUERY.fullmatch(q)
        assert m, f"a query this test cannot read: {q!r}"
        assert m[3] == "pgbkp"
        grouped.add((m[2], tuple(sorted(g.strip() for g in (m[4] or "").split(",") if g.strip()))))
    return plain, grouped


def test_every_metric_the_template_reads_is_emitted_with_its_dimensions(
        template: dict[str, Any], emitted: dict[str, set[tuple[str, ...]]]) -> None:
    plain, grouped = references(template)
    assert plain == {("DatabasesBackedUp", ("service",))}  # the staleness alarm and a dashboard line
    assert {name for name, _ in grouped} == {"BackupSucceeded", "BackupFailed", "BackupBytes", "BackupSeconds",
                                             "RetentionDeleted"}
    for name, dims in plain:
        assert dims in emitted.get(name, set()), f"{name} {dims}: not emitted so (emitted: {emitted.get(name)})"
    for name, group in grouped:
        assert any(set(group) <= set(d) for d in emitted.get(name, set())), f"{name} GROUP BY {group}"


def test_the_dashboard_shows_every_per_database_metric(template: dict[str, Any],
                                                       emitted: dict[str, set[tuple[str, ...]]]) -> None:
    per_database = {n for n, sets in emitted.items() if ("connection", "database", "service") in sets}
    _plain, grouped = references(template)
    assert per_database == {name for name, _ in grouped}


def test_the_staleness_alarm_treats_silence_as_no_backup(template: dict[str, Any]) -> None:
    props = template["Resources"]["StaleBackupAlarm"]["Properties"]
    assert props["TreatMissingData"] == "breaching"
    assert props["EvaluationPeriods"] == props["DatapointsToAlarm"] == {"!Ref": "MaxBackupAgeHours"}
    assert props["Period"] == 3600 and props["Statistic"] == "Sum"
    assert (props["ComparisonOperator"], props["Threshold"]) == ("LessThanThreshold", 1)
    assert props["Dimensions"] == [{"Name": "service", "Value": "pgbkp"}]
    function_env = template["Resources"]["BackupFunction"]["Properties"]["Environment"]["Variables"]
    assert function_env["POWERTOOLS_SERVICE_NAME"] == "pgbkp"  # the dimension's value
    assert function_env["POWERTOOLS_METRICS_NAMESPACE"] == props["Namespace"] == lambda_function.NAMESPACE
    param = template["Parameters"]["MaxBackupAgeHours"]
    assert param["MaxValue"] * props["Period"] <= 7 * 24 * 3600  # CloudWatch's longest evaluation range
    assert props["AlarmActions"] == {"!If": ["HasAlarmEmail", [{"!Ref": "AlarmTopic"}], {"!Ref": "AWS::NoValue"}]}


def test_a_fargate_tasks_backups_feed_the_staleness_alarm_too(template: dict[str, Any]) -> None:
    """A database too big for Lambda is backed up by `pgbkp backup` in a task, whose invocation reports it as
    dispatched: unless the task emits DatabasesBackedUp itself, a deployment whose only database goes to
    Fargate is 'stale' after every successful backup."""
    plain, _grouped = references(template)
    doc = json.loads(emf.backed_up(service="pgbkp", count=1))
    [directive] = doc["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == template["Resources"]["StaleBackupAlarm"]["Properties"]["Namespace"]
    task = {(m["Name"], tuple(sorted(dims))) for dims in directive["Dimensions"] for m in directive["Metrics"]}
    assert plain <= task and doc["DatabasesBackedUp"] == [1.0] and doc["service"] == "pgbkp"
