"""Past one Lambda invocation: which databases go to ECS Fargate, and the RunTask that sends them there.

A Lambda invocation ends at its timeout (900 s at most). The hand-off in ``handler_core`` spreads *many*
databases over fresh invocations, but it cannot split *one*: a database whose dump does not fit a fresh
invocation would be cut off at the time limit however often it is handed on. :func:`plan` finds those
databases before any dump starts, from each one's size on disk, so that they run where there is no such
limit: an ECS Fargate task of the same image (template.yaml, the ``Fargate*`` parameters). Without
Fargate they stay in Lambda, as before, with a warning that names the parameter to set.

:func:`plan` is pure (names, sizes and numbers in, a decision out). :func:`run_task` takes the ECS client
that the Lambda edge built: boto3 is imported only at the edges (.importlinter), never here. The task
gets the connection and the database on its command line and nothing else: it reads the secrets itself,
with its own role, from the same environment and secrets the function has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pgbkp.config import ConfigError, setting
from pgbkp.output import size
from pgbkp.redact import redact

#: Lambda's longest timeout; template.yaml sets the function's to this.
MAX_LAMBDA_SECONDS = 900
#: The template parameter that turns Fargate on; the warning for a database too big for Lambda names it.
FARGATE_PARAMETER = "FargateSubnets"
#: What the function's environment carries when the template's Fargate resources exist.
FARGATE_VARIABLES = ("FARGATE_CLUSTER", "FARGATE_TASK_DEFINITION", "FARGATE_SUBNETS", "FARGATE_SECURITY_GROUPS",
                     "FARGATE_ASSIGN_PUBLIC_IP", "FARGATE_CONTAINER")
#: The task definition's container (template.yaml, BackupTaskDefinition; FARGATE_CONTAINER's default).
DEFAULT_CONTAINER = "pgbkp"
#: ECS keeps this on the task (``startedBy``), so a console or `aws ecs list-tasks --started-by` finds ours.
STARTED_BY = "pgbkp"


class FargateDispatchError(Exception):
    """ECS refused to start the task for one database (or the call failed); that database did not start."""


@dataclass(frozen=True)
class TimeLimits:
    """The margins and the rate that turn a size on disk into the time a dump may need (the same three
    variables the Lambda time budget reads, with the same defaults and ranges)."""

    safety_margin: int = 120
    hard_margin: int = 20
    mb_per_second: int = 10

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TimeLimits:
        return cls(setting(env, "TIME_SAFETY_MARGIN_SECONDS"), setting(env, "TIME_HARD_MARGIN_SECONDS"),
                   setting(env, "TIME_ESTIMATE_MB_PER_SECOND"))

    def dump_seconds(self, size_bytes: int) -> float:
        """Seconds a dump may need at the measured rate (decimal MB: the size on disk over-counts anyway)."""
        return size_bytes / (self.mb_per_second * 1_000_000)

    def fits(self, size_bytes: int, budget_seconds: int) -> bool:
        """Whether the dump and both margins fit ``budget_seconds``; whole numbers, so the edge is exact."""
        room = budget_seconds - self.safety_margin - self.hard_margin
        return size_bytes <= room * self.mb_per_second * 1_000_000


@dataclass(frozen=True)
class Database:
    """One database of a connection and its size on disk in bytes (0: unknown, taken to fit)."""

    name: str
    size_bytes: int


@dataclass(frozen=True)
class Plan:
    """Where each database of one connection runs, in the order given."""

    in_lambda: tuple[str, ...]
    to_fargate: tuple[str, ...]
    #: One line per database too big for Lambda that stays there because Fargate is not configured.
    warnings: tuple[str, ...]


def plan(connection: str, databases: Sequence[Database], *, limits: TimeLimits, fargate: bool,
         budget_seconds: int = MAX_LAMBDA_SECONDS) -> Plan:
    """Split one connection's databases between Lambda and Fargate.

    A database goes to Fargate when its dump (``size_bytes`` at ``limits.mb_per_second``) plus both margins
    does not fit one *fresh* invocation (``budget_seconds``, the function's timeout): no hand-off can help
    it. Everything else stays in Lambda, where the hand-off spreads it over invocations as before.
    """
    if not 1 <= budget_seconds <= MAX_LAMBDA_SECONDS:
        raise ValueError(f"plan {connection}: budget_seconds {budget_seconds} is not a Lambda timeout "
                         f"(1 to {MAX_LAMBDA_SECONDS})")
    in_lambda: list[str] = []
    to_fargate: list[str] = []
    warnings: list[str] = []
    for db in databases:
        if limits.fits(db.size_bytes, budget_seconds):
            in_lambda.append(db.name)
        elif fargate:
            to_fargate.append(db.name)
        else:
            in_lambda.append(db.name)
            warnings.append(_too_big(connection, db, limits, budget_seconds))
    return Plan(tuple(in_lambda), tuple(to_fargate), tuple(warnings))


def _too_big(connection: str, db: Database, limits: TimeLimits, budget_seconds: int) -> str:
    need = limits.dump_seconds(db.size_bytes) + limits.safety_margin + limits.hard_margin
    return (f"backup {connection}/{db.name}: {size(db.size_bytes)} on disk needs about {need:.0f} s "
            f"(at TIME_ESTIMATE_MB_PER_SECOND={limits.mb_per_second}, plus TIME_SAFETY_MARGIN_SECONDS="
            f"{limits.safety_margin} and TIME_HARD_MARGIN_SECONDS={limits.hard_margin}), more than one Lambda "
            f"invocation has ({budget_seconds} s); it starts in Lambda anyway and is stopped at the time limit if "
            f"the estimate holds. Fix: set the template parameter {FARGATE_PARAMETER} (and FargateSecurityGroups) "
            "to run it on ECS Fargate, or back it up with the local runner or the Kubernetes CronJob")


@dataclass(frozen=True)
class FargateSettings:
    """Where the Fargate task runs: the template's resources, handed to the function in its environment."""

    cluster: str
    task_definition: str
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...] = ()
    assign_public_ip: bool = False
    container: str = DEFAULT_CONTAINER

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FargateSettings | None:
        """None when no ``FARGATE_*`` variable is set (Fargate off); a ConfigError when only some are."""
        values = {name: env.get(name, "").strip() for name in FARGATE_VARIABLES}
        if not any(values.values()):
            return None
        for name in ("FARGATE_CLUSTER", "FARGATE_TASK_DEFINITION", "FARGATE_SUBNETS"):
            if not values[name]:
                raise ConfigError(f"{name}: empty while other FARGATE_* variables are set. Fix: set "
                                  "FARGATE_CLUSTER, FARGATE_TASK_DEFINITION and FARGATE_SUBNETS together "
                                  f"(template.yaml does, from {FARGATE_PARAMETER}), or unset every FARGATE_* "
                                  "variable to keep every database in Lambda.")
        return cls(setting(env, "FARGATE_CLUSTER"), setting(env, "FARGATE_TASK_DEFINITION"),
                   setting(env, "FARGATE_SUBNETS"), setting(env, "FARGATE_SECURITY_GROUPS") or (),
                   setting(env, "FARGATE_ASSIGN_PUBLIC_IP"), setting(env, "FARGATE_CONTAINER"))


class EcsClient(Protocol):
    """What :func:`run_task` needs of boto3's ECS client (the edge builds it; tests may pass their own)."""

    def run_task(self, **kwargs: Any) -> Mapping[str, Any]: ...


def task_command(connection: str, database: str) -> list[str]:
    """The container's command after its ``pgbkp`` entry point. ``--opt=value``, so that a database
    named like an option (``-x``) is still a value. Names only: the task reads the secrets itself."""
    return ["backup", f"--connection={connection}", f"--database={database}"]


def run_task_request(settings: FargateSettings, connection: str, database: str) -> dict[str, Any]:
    """The RunTask arguments for one database: the task definition's own environment, roles and image,
    with only the command overridden."""
    network: dict[str, Any] = {"subnets": list(settings.subnets),
                               "assignPublicIp": "ENABLED" if settings.assign_public_ip else "DISABLED"}
    if settings.security_groups:
        network["securityGroups"] = list(settings.security_groups)
    return {
        "cluster": settings.cluster,
        "taskDefinition": settings.task_definition,
        "launchType": "FARGATE",
        "count": 1,
        "startedBy": STARTED_BY,
        "networkConfiguration": {"awsvpcConfiguration": network},
        "overrides": {"containerOverrides": [{"name": settings.container,
                                              "command": task_command(connection, database)}]},
    }


def run_task(client: EcsClient, settings: FargateSettings, connection: str, database: str) -> dict[str, Any]:
    """Start one Fargate task for one database; return its result entry (``dispatched_to: fargate`` and
    the task's ARN). Raises FargateDispatchError when ECS starts no task."""
    what = f"run ECS task {settings.task_definition} on cluster {settings.cluster} for {connection}/{database}"
    try:
        response = client.run_task(**run_task_request(settings, connection, database))
    except Exception as exc:  # the client is the edge's: botocore's errors, or a network failure
        raise FargateDispatchError(f"{what}: {redact(str(exc))}") from exc
    tasks = list(response.get("tasks") or [])
    failures = list(response.get("failures") or [])
    if len(tasks) != 1 or not tasks[0].get("taskArn"):  # count=1: one task, or failures saying why not
        reasons = "; ".join(_failure(f) for f in failures)
        raise FargateDispatchError(f"{what}: ECS started {len(tasks)} task(s)" + (f": {reasons}" if reasons else ""))
    return {"connection": connection, "database": database, "status": "dispatched", "dispatched_to": "fargate",
            "task_arn": str(tasks[0]["taskArn"])}


def _failure(failure: Mapping[str, Any]) -> str:
    """One entry of RunTask's ``failures``: what failed, ECS's reason and its detail."""
    text = f"{failure.get('arn', '?')}: {failure.get('reason', '?')}"
    return f"{text} ({failure['detail']})" if failure.get("detail") else text
