"""deploy/kubernetes: the CronJob's settings that must agree with pg-bkp's own (grace period, CPUs, a writable
/tmp on a read-only root), and a ConfigMap and Secret that pg-bkp loads as they stand. The schema itself is
checked by kubernetes-validate in `make lint` (.ci/lint-infra.sh), which also renders the kustomization."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from pgbkp import config, dispatch, runner
from tests.helpers import ROOT

KUBE = ROOT / "deploy" / "kubernetes"
#: What pg-bkp needs after SHUTDOWN_GRACE_SECONDS: abort the upload (up to 15 s with parts in flight) and
#: send the last pings (up to 5 s); docker-compose.yml's stop_grace_period keeps the same 20 s.
CLEANUP_SECONDS = 20
#: Values that must never sit in the ConfigMap (readable by anyone who may read the namespace's config).
SECRET_NAMES = {"PG_URLS", "ZIP_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY", "NOTIFY_URLS"}


def load(name: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((KUBE / name).read_text(encoding="utf-8")) if d]
    assert len(docs) == 1, f"{name}: one resource per file"
    return docs[0]


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    return load("kustomization.yaml")


@pytest.fixture(scope="module")
def cronjob() -> dict[str, Any]:
    return load("cronjob.yaml")


@pytest.fixture(scope="module")
def pod(cronjob: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    assert [c["name"] for c in pod["containers"]] == ["pgbkp"]
    first: dict[str, Any] = pod["containers"][0]
    return first


@pytest.fixture
def pod_env(forget_test_secrets: None) -> Iterator[dict[str, str]]:
    """The environment the container gets: the ConfigMap, then the Secret (envFrom order)."""
    yield {**load("configmap.yaml")["data"], **load("secret.yaml")["stringData"]}


def test_the_kustomization_ties_together_every_file_and_names_the_image(kustomization: dict[str, Any],
                                                                       container: dict[str, Any]) -> None:
    files = sorted(p.name for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files
    assert kustomization["namespace"] == load("namespace.yaml")["metadata"]["name"] == "pgbkp"
    assert [i["name"] for i in kustomization["images"]] == [container["image"]] == ["pgbkp"]


def test_the_cronjob_never_overlaps_never_retries_and_keeps_a_short_history(cronjob: dict[str, Any]) -> None:
    spec = cronjob["spec"]
    job = spec["jobTemplate"]["spec"]
    assert (spec["concurrencyPolicy"], spec["startingDeadlineSeconds"], spec["successfulJobsHistoryLimit"],
            spec["failedJobsHistoryLimit"]) == ("Forbid", 3600, 3, 3)
    assert (spec["schedule"], spec["timeZone"]) == ("0 3 * * *", "America/Sao_Paulo")
    assert (job["backoffLimit"], job["ttlSecondsAfterFinished"]) == (0, 604800)
    assert job["template"]["spec"]["restartPolicy"] == "Never"


def test_the_pod_runs_pgbkp_once_as_a_non_root_user_on_a_read_only_root(pod: dict[str, Any],
                                                                       container: dict[str, Any]) -> None:
    assert (container["command"], container["args"]) == (["pgbkp"], ["serve"])
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                      "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    assert container["env"] == [{"name": "HOME", "value": "/tmp"}]


def test_the_pod_reads_the_configmap_and_secret_and_runs_as_the_service_account(pod: dict[str, Any],
                                                                               container: dict[str, Any]) -> None:
    assert container["envFrom"] == [{"configMapRef": {"name": load("configmap.yaml")["metadata"]["name"]}},
                                    {"secretRef": {"name": load("secret.yaml")["metadata"]["name"]}}]
    account = load("serviceaccount.yaml")
    assert pod["serviceAccountName"] == account["metadata"]["name"] == "pgbkp"
    assert pod["automountServiceAccountToken"] is False


def test_the_service_account_carries_an_iam_role_for_irsa() -> None:
    annotations = load("serviceaccount.yaml")["metadata"]["annotations"]
    assert re.fullmatch(r"arn:aws:iam::[0-9]{12}:role/[\w+=,.@-]+", annotations["eks.amazonaws.com/role-arn"])


def test_the_grace_period_is_pgbkps_shutdown_grace_plus_the_cleanup(pod: dict[str, Any],
                                                                  pod_env: dict[str, str]) -> None:
    made = runner.make_runner(config.load(pod_env), backup=lambda stop, obs: runner.Outcome(0, ""))
    assert made.schedule is None  # CRON_ENABLED=false: one run at start, then exit with its code
    assert made.grace == int(pod_env["SHUTDOWN_GRACE_SECONDS"]) == 30
    assert pod["terminationGracePeriodSeconds"] == made.grace + CLEANUP_SECONDS == 50


def test_the_cpus_are_sized_from_compression_threads(container: dict[str, Any], pod_env: dict[str, str]) -> None:
    threads = config.load(pod_env).compression_threads
    assert threads == 2
    assert container["resources"] == {"requests": {"cpu": str(threads), "memory": "256Mi"},
                                      "limits": {"cpu": str(threads + 1), "memory": "1Gi"}}


def test_every_key_is_a_pgbkp_variable_and_the_secrets_are_only_in_the_secret(pod_env: dict[str, str]) -> None:
    known = {v.name for v in config.VARIABLES}
    data, secret = load("configmap.yaml")["data"], load("secret.yaml")
    assert sorted(set(data) - known) == [] and sorted(set(secret["stringData"]) - known) == []
    assert set(data) & SECRET_NAMES == set()
    assert secret["type"] == "Opaque" and "data" not in secret
    assert set(secret["stringData"]) == {"PG_URLS", "ZIP_PASSWORD"}
    assert all("CHANGE-ME" in value for value in secret["stringData"].values())  # placeholders only
    loaded = config.load(pod_env)
    assert [c.name for c in loaded.connections] == ["main"]
    # The root filesystem is read-only: no log file, the health file on the /tmp volume.
    assert (data["LOG_FILE"], data["HEALTH_FILE"], data["LOG_FORMAT"]) == ("off", "/tmp/pgbkp-health.json", "json")


def test_every_file_parses_as_one_resource() -> None:
    kinds = {p.name: load(p.name)["kind"] for p in sorted(KUBE.glob("*.yaml"))}
    assert kinds == {"configmap.yaml": "ConfigMap", "cronjob.yaml": "CronJob", "kustomization.yaml": "Kustomization",
                     "namespace.yaml": "Namespace", "secret.yaml": "Secret", "serviceaccount.yaml": "ServiceAccount"}


def test_the_yaml_files_are_the_folder() -> None:
    """Nothing else lives there that `kubectl apply -k` would ignore unnoticed (a .yml, a stray manifest)."""
    assert sorted(p.name for p in KUBE.iterdir()) == [
        "configmap.yaml", "cronjob.yaml", "kustomization.yaml", "namespace.yaml", "secret.yaml",
        "serviceaccount.yaml"]


# --- template.yaml: the optional Fargate task agrees with the function and with pgbkp.dispatch ---------

class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms: ``!Ref X`` becomes ``{"!Ref": "X"}``."""


def _short_form(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    return {f"!{suffix}": value}


_CfnLoader.add_multi_constructor("!", _short_form)
NO_VALUE = {"!Ref": "AWS::NoValue"}
#: What only the function reads: Lambda's own, the secrets it fetches itself, and where the task is.
FUNCTION_ONLY = {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "PG_URLS_SECRET_ID",
                 "ZIP_PASSWORD_SECRET_ID", "AGE_RECIPIENTS_SECRET_ID", "NOTIFY_URLS_SECRET_ID",
                 *dispatch.FARGATE_VARIABLES}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load((ROOT / "template.yaml").read_text(encoding="utf-8"), Loader=_CfnLoader)
    return loaded


def _statements(policies: list[Any]) -> dict[str, dict[str, Any]]:
    """The function's inline statements by Sid, the conditional ones unwrapped."""
    found = {}
    for policy in policies:
        for statement in policy.get("Statement", []) if isinstance(policy, dict) else []:
            if "!If" in statement:
                assert statement["!If"][2] == NO_VALUE
                statement = statement["!If"][1]
            found[statement["Sid"]] = statement
    return found


def _names(entries: list[Any]) -> set[str]:
    """Names in an ECS Environment or Secrets list, the conditional ones included."""
    names = set()
    for entry in entries:
        for candidate in entry["!If"][1:] if "!If" in entry else [entry]:
            if candidate != NO_VALUE:
                names.add(candidate["Name"])
    return names


def test_the_task_runs_the_functions_image_as_pgbkp_backup(template: dict[str, Any]) -> None:
    task = template["Resources"]["BackupTaskDefinition"]["Properties"]
    [container] = task["ContainerDefinitions"]
    assert container["Name"] == dispatch.DEFAULT_CONTAINER
    # dispatch overrides the command only: the entry point plus its command is `pgbkp backup ...`.
    assert container["EntryPoint"] + dispatch.task_command("main", "db") == [
        "pgbkp", "backup", "--connection=main", "--database=db"]
    assert container["Command"] == ["backup"]
    assert (container["Image"], container["User"], container["ReadonlyRootFilesystem"]) == (
        {"!Ref": "FargateImageUri"}, "10001:10001", True)
    assert (task["RequiresCompatibilities"], task["NetworkMode"]) == (["FARGATE"], "awsvpc")
    assert task["RuntimePlatform"]["CpuArchitecture"] == {"!If": ["IsArm64", "ARM64", "X86_64"]}


def test_the_task_has_every_setting_of_the_function(template: dict[str, Any]) -> None:
    function_env = set(template["Resources"]["BackupFunction"]["Properties"]["Environment"]["Variables"])
    [container] = template["Resources"]["BackupTaskDefinition"]["Properties"]["ContainerDefinitions"]
    env, secrets = _names(container["Environment"]), _names(container["Secrets"])
    assert env | secrets == (function_env - FUNCTION_ONLY) | {"LOG_FORMAT", "LOG_FILE", "PGBKP_EMF"}
    # The function's metrics, printed by the task as EMF on stdout (awslogs): the failure alarm counts them.
    assert {"Name": "PGBKP_EMF", "Value": "stdout"} in container["Environment"]
    # from Secrets Manager or SSM through ECS, when given as ARNs
    assert secrets == {"PG_URLS", "ZIP_PASSWORD", "AGE_RECIPIENTS", "NOTIFY_URLS"}
    assert sorted(n for n in env | secrets if n not in {v.name for v in config.VARIABLES}) == []


def test_the_function_is_told_where_the_task_runs(template: dict[str, Any]) -> None:
    variables = template["Resources"]["BackupFunction"]["Properties"]["Environment"]["Variables"]
    # FARGATE_CONTAINER stays at its default, the task definition's container name.
    assert {n for n in variables if n.startswith("FARGATE_")} == set(dispatch.FARGATE_VARIABLES) - {
        "FARGATE_CONTAINER"}
    assert variables["FARGATE_TASK_DEFINITION"] == {"!If": ["UseFargate", {"!Ref": "BackupTaskDefinition"}, ""]}


def test_the_function_may_run_only_that_task_and_pass_only_its_two_roles(template: dict[str, Any]) -> None:
    statements = _statements(template["Resources"]["BackupFunction"]["Properties"]["Policies"])
    run, passing = statements["RunBackupTask"], statements["PassBackupTaskRoles"]
    assert (run["Action"], run["Resource"]) == ("ecs:RunTask", {"!Ref": "BackupTaskDefinition"})
    assert list(run["Condition"]["ArnEquals"]) == ["ecs:cluster"]
    assert passing["Action"] == "iam:PassRole"
    assert passing["Resource"] == [{"!GetAtt": "BackupTaskRole.Arn"}, {"!GetAtt": "BackupTaskExecutionRole.Arn"}]
    assert passing["Condition"] == {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}


def test_the_task_and_the_function_share_one_storage_policy(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    assert resources["BackupTaskRole"]["Properties"]["ManagedPolicyArns"] == [{"!Ref": "BackupStoragePolicy"}]
    assert {"!Ref": "BackupStoragePolicy"} in resources["BackupFunction"]["Properties"]["Policies"]
    sids = {s["Sid"] if "Sid" in s else s["!If"][1]["Sid"]
            for s in resources["BackupStoragePolicy"]["Properties"]["PolicyDocument"]["Statement"]}
    assert {"BackupObjects", "BackupBuckets", "EncryptBackups"} <= sids
    assert set(_statements(resources["BackupFunction"]["Properties"]["Policies"])) & sids == set()


def test_the_fargate_resources_exist_only_with_the_fargate_parameters(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    fargate = {name for name, r in resources.items() if r["Type"].startswith("AWS::ECS::")} | {
        "BackupTaskRole", "BackupTaskExecutionRole", "BackupTaskLogGroup", "BackupTaskFailedRule",
        "BackupTaskFailedQueuePolicy"}
    assert {name: resources[name].get("Condition") for name in fargate} == {
        name: ("CreateFargateCluster" if name == "BackupCluster" else "UseFargate") for name in fargate}
    assert template["Conditions"]["UseFargate"] == {"!Not": [{"!Equals": [
        {"!Join": ["", {"!Ref": "FargateSubnets"}]}, ""]}]}


def test_one_architecture_parameter_sets_the_function_the_task_and_the_layer(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    assert template["Parameters"]["Architecture"]["AllowedValues"] == ["x86_64", "arm64"]
    assert resources["BackupFunction"]["Properties"]["Architectures"] == [{"!Ref": "Architecture"}]
    assert resources["PostgresClientLayer"]["Properties"]["CompatibleArchitectures"] == [{"!Ref": "Architecture"}]


#: The rule's !If and !Sub, as the stack resolves them with a created cluster and FunctionName pgbkp.
CLUSTER_ARN = "arn:aws:ecs:us-east-1:123456789012:cluster/pgbkp-backups"


def _stopped(*exit_codes: int | None, stop_code: str = "EssentialContainerExited",
             group: str = "family:pgbkp-backup", cluster: str = CLUSTER_ARN) -> dict[str, Any]:
    """An "ECS Task State Change" event in the documented shape (the ECS developer guide's example)."""
    containers = [{"name": "pgbkp", "lastStatus": "STOPPED", **({} if code is None else {"exitCode": code})}
                  for code in exit_codes]
    return {"version": "0", "id": "e", "detail-type": "ECS Task State Change", "source": "aws.ecs",
            "account": "123456789012", "region": "us-east-1", "resources": [],
            "detail": {"clusterArn": cluster, "group": group, "lastStatus": "STOPPED",
                       "desiredStatus": "STOPPED", "stopCode": stop_code, "containers": containers}}


@pytest.mark.parametrize(("event", "fires"), [
    (_stopped(1), True),  # a backup failed
    (_stopped(2), True),  # a configuration error
    (_stopped(143, stop_code="UserInitiated"), True),  # StopTask: SIGTERM, the upload aborted
    (_stopped(137), True),  # SIGKILL after the stop timeout, or out of memory
    (_stopped(None, stop_code="TaskFailedToStart"), True),  # the image could not be pulled, no capacity
    (_stopped(0), False),  # all good
    (_stopped(1, group="family:other-backup"), False),  # another task definition in a shared cluster
    (_stopped(1, cluster="arn:aws:ecs:us-east-1:123456789012:cluster/other"), False),
], ids=["failed", "config", "sigterm", "sigkill", "never-started", "ok", "other-family", "other-cluster"])
def test_the_stopped_rule_fires_on_a_non_zero_exit_or_a_task_that_never_started(
        template: dict[str, Any], event: dict[str, Any], fires: bool) -> None:
    from moto.events.models import EventPattern  # EventBridge's matching rules, $or and anything-but included

    pattern = json.loads(json.dumps(template["Resources"]["BackupTaskFailedRule"]["Properties"]["EventPattern"]))
    assert pattern["detail"]["clusterArn"] == [{"!If": ["CreateFargateCluster", {"!GetAtt": "BackupCluster.Arn"},
                                                        {"!Ref": "FargateClusterArn"}]}]
    assert pattern["detail"]["group"] == [{"!Sub": "family:${FunctionName}-backup"}]
    assert template["Resources"]["BackupTaskDefinition"]["Properties"]["Family"] == {"!Sub": "${FunctionName}-backup"}
    pattern["detail"]["clusterArn"], pattern["detail"]["group"] = [CLUSTER_ARN], ["family:pgbkp-backup"]
    rule = EventPattern.load(json.dumps(pattern))
    # EventBridge matches a field inside an array of objects if any element matches; moto's engine does not
    # descend into arrays, so each container is offered on its own (and an event without one as it is).
    offered = [{**event, "detail": {**event["detail"], "containers": c}} for c in event["detail"]["containers"]]
    assert any(rule.matches_event(e) for e in offered or [event]) is fires


def test_the_age_recipients_parameter_refuses_a_private_key(template: dict[str, Any]) -> None:
    """CloudFormation matches AllowedPattern against the whole value (Java regex; the same in Python here)."""
    pattern = re.compile(template["Parameters"]["AgeRecipients"]["AllowedPattern"])
    public = "age1x27jhtn9fsmuvq0wzyfdk3hhla5urcythz44ug7j8sx97hkdv3nsuu99z9"
    for allowed in ("", public, f"{public},ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOqK restore, team private key"):
        assert pattern.fullmatch(allowed), allowed
    secret = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX"
    for refused in (secret, f"{public},{secret}", f"{public},{secret.lower()}",
                    "-----BEGIN OPENSSH PRIVATE KEY----- b3BlbnNzaC1rZXktdjE -----END OPENSSH PRIVATE KEY-----"):
        assert not pattern.fullmatch(refused), refused
