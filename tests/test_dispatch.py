"""pgbkp.dispatch: which databases go to ECS Fargate (a pure decision, exact numbers), and the RunTask that
sends one there, against moto's ECS reached through boto3's own endpoint setting (AWS_ENDPOINT_URL_ECS)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import boto3
import pytest

from pgbkp import cli, config, handler_core, lambda_function, output
from pgbkp.config import ConfigError
from pgbkp.dispatch import (
    Database,
    FargateDispatchError,
    FargateSettings,
    Plan,
    TimeLimits,
    plan,
    run_task,
    run_task_request,
    task_command,
)
from pgbkp.pipeline import Job
from pgbkp.storage.memory import MemoryStorage
from tests.fakes import FakeDatabase, FakeDumpSource, FakeLambdaContext
from tests.servers import S3Server

GB = 1_000_000_000
MB = 1_000_000
DEFAULTS = TimeLimits()  # 120 s safety, 20 s hard margin, 10 MB/s
#: With the defaults, one fresh 900 s invocation holds 900 - 120 - 20 = 760 s of dump: 7.6 GB at 10 MB/s.
LARGEST_FOR_LAMBDA = 7_600_000_000

#: The issue's scenario: one 80 GB database in a connection with four small ones.
SCENARIO = [Database("app", 120 * MB), Database("warehouse", 80 * GB), Database("auth", 8 * MB),
            Database("billing", 2 * GB), Database("reports", LARGEST_FOR_LAMBDA)]


# --- the decision --------------------------------------------------------------------------------------

def test_the_80_gb_database_goes_to_fargate_and_the_four_small_ones_stay_in_lambda() -> None:
    assert plan("main", SCENARIO, limits=DEFAULTS, fargate=True) == Plan(
        in_lambda=("app", "auth", "billing", "reports"), to_fargate=("warehouse",), warnings=())


def test_without_fargate_everything_stays_in_lambda_with_one_warning_naming_the_database_and_parameter() -> None:
    assert plan("main", SCENARIO, limits=DEFAULTS, fargate=False) == Plan(
        in_lambda=("app", "warehouse", "auth", "billing", "reports"), to_fargate=(),
        warnings=("backup main/warehouse: 80.0 GB on disk needs about 8140 s (at TIME_ESTIMATE_MB_PER_SECOND=10, "
                  "plus TIME_SAFETY_MARGIN_SECONDS=120 and TIME_HARD_MARGIN_SECONDS=20), more than one Lambda "
                  "invocation has (900 s); it starts in Lambda anyway and is stopped at the time limit if the "
                  "estimate holds. Fix: set the template parameter FargateSubnets (and FargateSecurityGroups) to "
                  "run it on ECS Fargate, or back it up with the local runner or the Kubernetes CronJob",))


def test_the_edge_is_exact_dump_plus_both_margins_equal_to_the_budget_fits() -> None:
    edge = [Database("fits", LARGEST_FOR_LAMBDA), Database("one-byte-more", LARGEST_FOR_LAMBDA + 1)]
    assert plan("main", edge, limits=DEFAULTS, fargate=True) == Plan(("fits",), ("one-byte-more",), ())


def test_the_margins_the_rate_and_the_function_timeout_all_count() -> None:
    # (300 - 60 - 10) s at 50 MB/s = 11.5 GB fits a 300 s function; a byte more does not.
    limits = TimeLimits(safety_margin=60, hard_margin=10, mb_per_second=50)
    dbs = [Database("a", 11_500_000_000), Database("b", 11_500_000_001)]
    assert plan("c", dbs, limits=limits, fargate=True, budget_seconds=300) == Plan(("a",), ("b",), ())
    # The same sizes in a 900 s function: 830 s at 50 MB/s = 41.5 GB, both fit.
    assert plan("c", dbs, limits=limits, fargate=True) == Plan(("a", "b"), (), ())


def test_an_unknown_size_is_taken_to_fit() -> None:
    assert plan("main", [Database("new", 0)], limits=DEFAULTS, fargate=True) == Plan(("new",), (), ())


@pytest.mark.parametrize("budget", [0, 901])
def test_a_budget_that_is_no_lambda_timeout_is_a_programming_error(budget: int) -> None:
    with pytest.raises(ValueError, match=f"plan main: budget_seconds {budget} is not a Lambda timeout"):
        plan("main", SCENARIO, limits=DEFAULTS, fargate=True, budget_seconds=budget)


def test_the_time_limits_read_the_same_variables_as_the_lambda_budget() -> None:
    assert TimeLimits.from_env({}) == TimeLimits(120, 20, 10)
    assert TimeLimits.from_env({"TIME_SAFETY_MARGIN_SECONDS": "60", "TIME_HARD_MARGIN_SECONDS": "5",
                                "TIME_ESTIMATE_MB_PER_SECOND": "57"}) == TimeLimits(60, 5, 57)
    with pytest.raises(ConfigError) as exc:
        TimeLimits.from_env({"TIME_ESTIMATE_MB_PER_SECOND": "0"})
    assert str(exc.value) == "TIME_ESTIMATE_MB_PER_SECOND: 0 is out of range. Fix: use a number from 1 to 900."


# --- the Fargate settings in the function's environment ------------------------------------------------

FULL_ENV = {"FARGATE_CLUSTER": "arn:aws:ecs:us-east-1:123456789012:cluster/pgbkp",
            "FARGATE_TASK_DEFINITION": "arn:aws:ecs:us-east-1:123456789012:task-definition/pgbkp-backup:3",
            "FARGATE_SUBNETS": "subnet-0123456789abcdef0, subnet-0fedcba9876543210",
            "FARGATE_SECURITY_GROUPS": "sg-0123456789abcdef0", "FARGATE_ASSIGN_PUBLIC_IP": "false"}


def test_no_fargate_variable_means_fargate_is_off() -> None:
    assert FargateSettings.from_env({"FARGATE_SUBNETS": " ", "PG_URLS": "x"}) is None


def test_the_fargate_settings_are_read_whole() -> None:
    assert FargateSettings.from_env(FULL_ENV) == FargateSettings(
        FULL_ENV["FARGATE_CLUSTER"], FULL_ENV["FARGATE_TASK_DEFINITION"],
        ("subnet-0123456789abcdef0", "subnet-0fedcba9876543210"), ("sg-0123456789abcdef0",), False, "pgbkp")


@pytest.mark.parametrize("missing", ["FARGATE_CLUSTER", "FARGATE_TASK_DEFINITION", "FARGATE_SUBNETS"])
def test_half_a_fargate_configuration_is_one_clear_error(missing: str) -> None:
    env = {k: v for k, v in FULL_ENV.items() if k != missing}
    with pytest.raises(ConfigError) as exc:
        FargateSettings.from_env(env)
    assert str(exc.value) == (
        f"{missing}: empty while other FARGATE_* variables are set. Fix: set FARGATE_CLUSTER, "
        "FARGATE_TASK_DEFINITION and FARGATE_SUBNETS together (template.yaml does, from FargateSubnets), or "
        "unset every FARGATE_* variable to keep every database in Lambda.")


@pytest.mark.parametrize(("name", "value", "message"), [
    ("FARGATE_SUBNETS", "subnet-0123456789abcdef0,vpc-0123456789abcdef0",
     "FARGATE_SUBNETS: 'vpc-0123456789abcdef0' is not an id of that kind. Fix: comma-separated ids such as "
     "subnet-0123456789abcdef0."),
    ("FARGATE_SECURITY_GROUPS", "default",
     "FARGATE_SECURITY_GROUPS: 'default' is not an id of that kind. Fix: comma-separated ids such as "
     "sg-0123456789abcdef0."),
    ("FARGATE_ASSIGN_PUBLIC_IP", "maybe", "FARGATE_ASSIGN_PUBLIC_IP: 'maybe' is not true or false. "
     "Fix: use true or false."),
])
def test_a_bad_fargate_value_names_the_variable_and_the_fix(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        FargateSettings.from_env({**FULL_ENV, name: value})
    assert str(exc.value) == message


# --- the task's command --------------------------------------------------------------------------------

@pytest.mark.parametrize("database", ["warehouse", "-x", "--dry-run", "naïve db, with=signs"])
def test_the_task_command_is_pgbkp_backup_of_exactly_that_database(database: str) -> None:
    args = cli.build_parser().parse_args(task_command("main", database))
    assert (args.command, args.connection, args.database, args.dry_run) == ("backup", ["main"], [database], False)


def test_a_database_named_like_an_option_needs_the_equals_form() -> None:
    """Why task_command writes --database=NAME: the two-word form reads ``-x`` as an option."""
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["backup", "--connection", "main", "--database", "-x"])


# --- RunTask against moto's ECS ------------------------------------------------------------------------

@pytest.fixture
def aws(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """moto's server (it serves ECS and EC2 on the S3 port) reached through boto3's service endpoint
    variables, as the Lambda edge's client would be; a VPC, subnet and security group for awsvpc tasks,
    a cluster and a Fargate task definition like template.yaml's."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"AWS_ENDPOINT_URL_ECS": s3.endpoint, "AWS_ENDPOINT_URL_EC2": s3.endpoint,
                        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    ec2 = boto3.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    # moto names an awsvpc task's network interface only in a VPC with DNS host names (as Fargate's are).
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="pgbkp-task", Description="pgbkp task", VpcId=vpc)["GroupId"]
    ecs = boto3.client("ecs")
    cluster = ecs.create_cluster(clusterName="pgbkp")["cluster"]["clusterArn"]
    task_definition = ecs.register_task_definition(
        family="pgbkp-backup", networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="2048",
        memory="4096", containerDefinitions=[{"name": "pgbkp", "image": "pgbkp:test", "essential": True,
                                              "entryPoint": ["pgbkp"], "command": ["backup"],
                                              "cpu": 2048, "memory": 4096}],
    )["taskDefinition"]["taskDefinitionArn"]
    yield {"cluster": cluster, "task_definition": task_definition, "subnet": subnet, "group": group}


def _ecs_with_recorder() -> tuple[Any, list[bytes]]:
    """boto3's ECS client from the environment, and the raw bodies of the requests it sends."""
    client = boto3.client("ecs")
    bodies: list[bytes] = []
    client.meta.events.register("before-send.ecs.RunTask",
                                lambda request, **kwargs: bodies.append(bytes(request.body or b"")))
    return client, bodies


def test_the_big_database_is_started_on_fargate_with_only_its_names_on_the_command(
        aws: dict[str, str], s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    # Secrets in the function's environment, as in Lambda: none of them may travel with the task.
    monkeypatch.setenv("PG_URLS", "main|bucket=b|postgres://u:pg-secret-in-env@db:5432/postgres")
    monkeypatch.setenv("ZIP_PASSWORD", "zip-secret-in-env")
    settings = FargateSettings.from_env({
        "FARGATE_CLUSTER": aws["cluster"], "FARGATE_TASK_DEFINITION": aws["task_definition"],
        "FARGATE_SUBNETS": aws["subnet"], "FARGATE_SECURITY_GROUPS": aws["group"]})
    assert settings is not None
    ecs, bodies = _ecs_with_recorder()
    assert ecs.meta.endpoint_url == s3.endpoint  # AWS_ENDPOINT_URL_ECS, not a code path of our own

    decided = plan("main", SCENARIO, limits=DEFAULTS, fargate=True)
    entries = [run_task(ecs, settings, "main", db) for db in decided.to_fargate]

    assert [(e["connection"], e["database"], e["status"], e["dispatched_to"]) for e in entries] == [
        ("main", "warehouse", "dispatched", "fargate")]
    arn = entries[0]["task_arn"]
    assert arn.startswith("arn:aws:ecs:us-east-1:123456789012:task/pgbkp/")
    assert ecs.list_tasks(cluster=aws["cluster"])["taskArns"] == [arn]
    task = ecs.describe_tasks(cluster=aws["cluster"], tasks=[arn])["tasks"][0]
    assert (task["launchType"], task["taskDefinitionArn"], task["startedBy"]) == (
        "FARGATE", aws["task_definition"], "pgbkp")
    assert task["overrides"]["containerOverrides"] == [
        {"name": "pgbkp", "command": ["backup", "--connection=main", "--database=warehouse"]}]
    # What went over the wire is exactly the request, and carries no secret.
    sent = [json.loads(b) for b in bodies]
    assert [{k: v for k, v in body.items() if k != "clientToken"} for body in sent] == [
        run_task_request(settings, "main", "warehouse")]
    assert len(sent[0]["clientToken"]) == 36  # botocore's idempotency token: its own retries start no 2nd task
    assert json.loads(bodies[0])["networkConfiguration"] == {"awsvpcConfiguration": {
        "subnets": [aws["subnet"]], "securityGroups": [aws["group"]], "assignPublicIp": "DISABLED"}}
    for secret in (b"pg-secret-in-env", b"zip-secret-in-env", b"testing"):
        assert secret not in bodies[0]


def test_a_refused_run_task_names_the_task_the_cluster_and_the_database(aws: dict[str, str]) -> None:
    missing = "arn:aws:ecs:us-east-1:123456789012:cluster/gone"
    settings = FargateSettings(missing, aws["task_definition"], (aws["subnet"],), (aws["group"],))
    with pytest.raises(FargateDispatchError) as exc:
        run_task(boto3.client("ecs"), settings, "main", "warehouse")
    assert str(exc.value).startswith(
        f"run ECS task {aws['task_definition']} on cluster {missing} for main/warehouse: An error occurred "
        "(ClusterNotFoundException) when calling the RunTask operation")


class _Answers:
    """An ECS client that answers RunTask with a fixed response (ECS reports capacity problems this way,
    with HTTP 200)."""

    def __init__(self, response: Mapping[str, Any]) -> None:
        self.response = response

    def run_task(self, **kwargs: Any) -> Mapping[str, Any]:
        return self.response


SETTINGS = FargateSettings("arn:aws:ecs:us-east-1:123456789012:cluster/pgbkp", "pgbkp-backup:3",
                           ("subnet-0123456789abcdef0",))


def test_failures_in_a_successful_answer_are_an_error() -> None:
    answer = {"tasks": [], "failures": [{"arn": "arn:aws:ecs:us-east-1:123456789012:container-instance/x",
                                         "reason": "RESOURCE:MEMORY", "detail": "no capacity"}]}
    with pytest.raises(FargateDispatchError) as exc:
        run_task(_Answers(answer), SETTINGS, "main", "warehouse")
    assert str(exc.value) == (
        "run ECS task pgbkp-backup:3 on cluster arn:aws:ecs:us-east-1:123456789012:cluster/pgbkp for "
        "main/warehouse: ECS started 0 task(s): arn:aws:ecs:us-east-1:123456789012:container-instance/x: "
        "RESOURCE:MEMORY (no capacity)")


def test_an_answer_without_a_task_is_an_error() -> None:
    with pytest.raises(FargateDispatchError, match=r"for main/warehouse: ECS started 0 task\(s\)$"):
        run_task(_Answers({"tasks": [], "failures": []}), SETTINGS, "main", "warehouse")


def test_the_request_without_security_groups_and_with_a_public_ip() -> None:
    settings = FargateSettings("c", "t:1", ("subnet-0123456789abcdef0",), assign_public_ip=True, container="app")
    assert run_task_request(settings, "main", "db") == {
        "cluster": "c", "taskDefinition": "t:1", "launchType": "FARGATE", "count": 1, "startedBy": "pgbkp",
        "networkConfiguration": {"awsvpcConfiguration": {"subnets": ["subnet-0123456789abcdef0"],
                                                         "assignPublicIp": "ENABLED"}},
        "overrides": {"containerOverrides": [{"name": "app",
                                              "command": ["backup", "--connection=main", "--database=db"]}]},
    }


# --- through the handler, as in Lambda: the issue's scenario ---------------------------------------------

#: One connection whose server has the issue's five databases (tests/fakes.py: sizes on disk, tiny dumps).
SERVER = {"main": [FakeDatabase(d.name, f"-- {d.name}\n".encode(), d.size_bytes) for d in SCENARIO]}
#: One database at a time: the budget then asks only whether each fits alone (with several in flight it adds
#: their estimates, and "reports", sized to fill a fresh invocation, would be handed on: test_many_databases).
HANDLER_ENV = {"PG_URLS": "main|postgres://u:pg-secret-in-url@db.invalid/postgres", "S3_BUCKET": "bkt",
               "ZIP_PASSWORD": "zip-secret-in-env", "TIMEZONE": "UTC", "COMPRESSION_THREADS": "1",
               "DATABASE_CONCURRENCY": "1"}


def _lambda_edge(store: MemoryStorage, source: FakeDumpSource, fargate: Any = None) -> handler_core.Edge:
    """A Lambda-like edge on the memory store: the function's EMF report, and its Fargate hook if given."""
    return handler_core.Edge(storage_for=lambda conn: store, source=source, report=lambda_function.report,
                             fargate=fargate)


def _fargate_settings(aws: dict[str, str], **env: str) -> FargateSettings:
    settings = FargateSettings.from_env({"FARGATE_CLUSTER": aws["cluster"],
                                         "FARGATE_TASK_DEFINITION": aws["task_definition"],
                                         "FARGATE_SUBNETS": aws["subnet"], "FARGATE_SECURITY_GROUPS": aws["group"],
                                         **env})
    assert settings is not None
    return settings


@pytest.fixture
def ecs_bodies(aws: dict[str, str]) -> Iterator[list[bytes]]:
    """The Lambda edge's own ECS client (made afresh, on moto), and the RunTask bodies it sends."""
    lambda_function.ecs_client.cache_clear()
    bodies: list[bytes] = []
    lambda_function.ecs_client().meta.events.register(
        "before-send.ecs.RunTask", lambda request, **kwargs: bodies.append(bytes(request.body or b"")))
    yield bodies
    lambda_function.ecs_client.cache_clear()


def test_in_lambda_the_small_databases_back_up_and_the_80_gb_one_goes_to_fargate(
        aws: dict[str, str], ecs_bodies: list[bytes], capsys: pytest.CaptureFixture[str]) -> None:
    store, source = MemoryStorage(["bkt"]), FakeDumpSource(SERVER)
    fargate = lambda_function.make_fargate(_fargate_settings(aws))
    capsys.readouterr()

    summary = handler_core.handle({"connection": "main"}, FakeLambdaContext(), config=config.load(HANDLER_ENV),
                                  edge=_lambda_edge(store, source, fargate))

    rows = {r["database"]: r for r in summary["results"]}
    assert summary["ok"] is True
    assert {name: r["status"] for name, r in rows.items()} == {
        "warehouse": "dispatched", "app": "ok", "auth": "ok", "billing": "ok", "reports": "ok"}
    # The big one never started here: no dump, no object, no upload.
    assert "dump main/warehouse" not in source.events
    assert sorted(k.split("/")[1] for k in store.objects["bkt"]) == ["app", "auth", "billing", "reports"]
    big = rows["warehouse"]
    assert (big["dispatched_to"], big["key"], big["raw_bytes"], big["size_estimate"], big["error"]) == (
        "fargate", "", 0, 80 * GB, None)
    # The task ECS started is the one the result names, with the connection and database as its command.
    ecs = boto3.client("ecs")
    assert ecs.list_tasks(cluster=aws["cluster"])["taskArns"] == [big["task_arn"]]
    [task] = ecs.describe_tasks(cluster=aws["cluster"], tasks=[big["task_arn"]])["tasks"]
    assert task["overrides"]["containerOverrides"] == [
        {"name": "pgbkp", "command": ["backup", "--connection=main", "--database=warehouse"]}]
    # One RunTask, carrying names only: no password, key or URL of the function's configuration.
    [body] = ecs_bodies
    assert {k: v for k, v in json.loads(body).items() if k != "clientToken"} == run_task_request(
        _fargate_settings(aws), "main", "warehouse")
    for secret in (b"pg-secret-in-url", b"zip-secret-in-env", b"db.invalid", b"testing"):
        assert secret not in body
    # Metrics: the four small ones as always; the big one counted as dispatched, its task reports the rest.
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    by_db = {d["database"]: d for d in docs}
    assert sorted(by_db) == ["app", "auth", "billing", "reports", "warehouse"]
    assert by_db["warehouse"]["BackupDispatched"] == [1.0]
    assert "BackupFailed" not in by_db["warehouse"] and "BackupSucceeded" not in by_db["warehouse"]
    assert [by_db[d]["BackupSucceeded"] for d in ("app", "auth", "billing", "reports")] == [[1.0]] * 4


def test_without_fargate_the_big_database_runs_in_lambda_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    store, source = MemoryStorage(["bkt"]), FakeDumpSource(SERVER)
    invoked: list[dict[str, Any]] = []
    edge = _lambda_edge(store, source)
    edge.invoker = invoked.append
    with caplog.at_level(logging.WARNING, logger="pgbkp.handler_core"):
        summary = handler_core.handle({"connection": "main"}, FakeLambdaContext(),
                                      config=config.load(HANDLER_ENV), edge=edge)
    # As before: the time budget hands it to a fresh invocation, where it starts first (and may run out).
    assert [(r["database"], r["status"]) for r in summary["results"]] == [
        ("app", "ok"), ("auth", "ok"), ("billing", "ok"), ("reports", "ok")]
    assert invoked == summary["handed_off"] == [{"connection": "main", "databases": ["warehouse"]}]
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == plan("main", SCENARIO, limits=DEFAULTS, fargate=False).warnings[0]
    assert "main/warehouse" in warning and "FargateSubnets" in warning


def test_outside_lambda_nothing_is_dispatched_and_nothing_warns(caplog: pytest.LogCaptureFixture) -> None:
    """pgbkp backup, serve and the Fargate task itself have no time limit (no context): all run here."""
    store, source = MemoryStorage(["bkt"]), FakeDumpSource(SERVER)
    started: list[str] = []
    with caplog.at_level(logging.WARNING, logger="pgbkp.handler_core"):
        summary = handler_core.handle({"connection": "main"}, None, config=config.load(HANDLER_ENV),
                                      edge=_lambda_edge(store, source, lambda job: started.append(job.database)))
    assert [r["status"] for r in summary["results"]] == ["ok"] * 5
    assert (started, [r for r in caplog.records if r.levelno >= logging.WARNING]) == ([], [])


def test_a_refused_run_task_fails_that_database_only(aws: dict[str, str], ecs_bodies: list[bytes]) -> None:
    store, source = MemoryStorage(["bkt"]), FakeDumpSource(SERVER)
    missing = "arn:aws:ecs:us-east-1:123456789012:cluster/gone"
    fargate = lambda_function.make_fargate(_fargate_settings(aws, FARGATE_CLUSTER=missing))

    with pytest.raises(handler_core.BackupFailedError) as exc:
        handler_core.handle({"connection": "main"}, FakeLambdaContext(), config=config.load(HANDLER_ENV),
                            edge=_lambda_edge(store, source, fargate))

    rows = {r["database"]: r for r in exc.value.summary["results"]}
    assert {name: r["status"] for name, r in rows.items()} == {
        "warehouse": "failed", "app": "ok", "auth": "ok", "billing": "ok", "reports": "ok"}
    error = rows["warehouse"]["error"]
    assert error.startswith(f"run ECS task {aws['task_definition']} on cluster {missing} for main/warehouse: "
                            "An error occurred (ClusterNotFoundException) when calling the RunTask operation")
    assert error.endswith(". Not backed up. Fix: the function's role needs ecs:RunTask on FARGATE_TASK_DEFINITION "
                          "and iam:PassRole on its two roles (template.yaml grants both), and ECS must have "
                          "Fargate capacity in FARGATE_SUBNETS")
    assert "dump main/warehouse" not in source.events and len(ecs_bodies) == 1
    assert str(exc.value).startswith("1 of 5 database backups failed: main/warehouse: run ECS task ")


def test_a_hook_that_fails_before_ecs_names_the_database() -> None:
    def no_region(job: Job) -> str:
        raise RuntimeError("You must specify a region.")

    with pytest.raises(handler_core.BackupFailedError) as exc:
        handler_core.handle({"connection": "main"}, FakeLambdaContext(), config=config.load(HANDLER_ENV),
                            edge=_lambda_edge(MemoryStorage(["bkt"]), FakeDumpSource(SERVER), no_region))
    [failed] = [r for r in exc.value.summary["results"] if r["status"] != "ok"]
    assert failed["error"].startswith(
        "run ECS task for main/warehouse: RuntimeError: You must specify a region.. Not backed up. Fix: ")


def test_the_lambda_edge_has_a_fargate_hook_only_with_the_templates_settings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    in_lambda = {"AWS_LAMBDA_FUNCTION_NAME": "pgbkp", **FULL_ENV}
    assert lambda_function.edge(in_lambda, FakeLambdaContext()).fargate is not None
    assert lambda_function.edge({"AWS_LAMBDA_FUNCTION_NAME": "pgbkp"}, FakeLambdaContext()).fargate is None
    # sam local and the image under docker run: no AWS to start tasks in.
    assert lambda_function.edge({**in_lambda, "AWS_SAM_LOCAL": "true"}, FakeLambdaContext()).fargate is None
    with pytest.raises(ConfigError, match=r"^FARGATE_SUBNETS: empty while other FARGATE_"):
        lambda_function.edge({**in_lambda, "FARGATE_SUBNETS": ""}, FakeLambdaContext())


def test_the_summary_and_the_table_show_a_dispatched_database(capsys: pytest.CaptureFixture[str]) -> None:
    arn = "arn:aws:ecs:us-east-1:123456789012:task/pgbkp/0123456789abcdef0123456789abcdef"
    entry = handler_core.summarize(handler_core.DispatchedResult(
        "main", "warehouse", "bkt", status="dispatched", size_estimate=80 * GB, task_arn=arn))
    assert output.summary_text([entry]) == (
        f"1 database(s): all ok\ndispatched main/warehouse to fargate task {arn}")
    cli.print_summary({"results": [entry]})
    assert capsys.readouterr().out.splitlines()[2].split() == [
        "main/warehouse", arn, "~80.0", "GB", "on", "disk", "-", "-", "dispatched"]
