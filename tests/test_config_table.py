"""The table of variables (pgbkp.config.variables) is the one source of every name, range and default:
docs/configuration.md's tables are written from it, .env.example shows the same names, and the modules
that still parse their own variables (runner, handler_core, pipeline, settings_secrets) agree with it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from pgbkp import (
    cli,
    dispatch,
    handler_core,
    health,
    logs,
    metrics,
    notify,
    pipeline,
    postgres,
    runner,
    schedule,
    settings_secrets,
)
from pgbkp.config import VARIABLES, ConfigError, Variable, load, setting
from pgbkp.config import docs as config_docs
from pgbkp.config.variables import BY_NAME, GROUPS, LOADER, Number
from tests.helpers import ROOT

DOCS = ROOT / "docs" / "configuration.md"
pytestmark = pytest.mark.usefixtures("forget_test_secrets")  # resolve() registers the fetched PG_URLS
BASE = {"PG_URLS": "postgres://u@127.0.0.1:1/postgres", "S3_BUCKET": "bkt"}


def test_the_reference_tables_are_written_from_the_table() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert config_docs.render(text) == text, f"docs/configuration.md is out of date. Fix: {config_docs.COMMAND}"


def test_a_changed_row_changes_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above compares something: change one default, and the written tables differ in that row."""
    text = DOCS.read_text(encoding="utf-8")
    changed = tuple(dataclasses.replace(v, default="`9`") if v.name == "S3_MAX_ATTEMPTS" else v for v in VARIABLES)
    monkeypatch.setattr(config_docs, "VARIABLES", changed)
    new = config_docs.render(text)
    diff = [(a, b) for a, b in zip(text.splitlines(), new.splitlines(), strict=True) if a != b]
    assert diff == [(
        "| `S3_MAX_ATTEMPTS` | attempts per S3 request (standard retry mode) | 1–20 | `5` |",
        "| `S3_MAX_ATTEMPTS` | attempts per S3 request (standard retry mode) | 1–20 | `9` |",
    )]


def test_the_command_rewrites_the_file(tmp_path: Path) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text("intro\n\n<!-- generated: variables -->\nSTALE ROW\n<!-- end: variables -->\n\n"
                     "<!-- generated: migrations -->\n<!-- end: migrations -->\nend\n", encoding="utf-8")
    assert config_docs.main(["--write", str(stale)]) == 0
    written = stale.read_text(encoding="utf-8")
    assert written.startswith("intro\n\n<!-- generated: variables -->\n### What to back up\n")
    assert "STALE ROW" not in written and written.endswith("<!-- end: migrations -->\nend\n")
    assert config_docs.render(written) == written


def test_every_row_is_complete_and_in_a_known_group() -> None:
    assert [v.name for v in VARIABLES if v.group not in GROUPS or not (v.meaning and v.accepted and v.default)] == []
    assert len(BY_NAME) == len(VARIABLES)  # no name twice
    assert all(re.fullmatch(r"[A-Z][A-Z0-9_]*", v.name) for v in VARIABLES)


@pytest.mark.parametrize("var", [v for v in VARIABLES if isinstance(v.parse, Number)], ids=lambda v: v.name)
def test_a_numbers_range_and_default_are_the_ones_documented(var: Variable) -> None:
    assert isinstance(var.parse, Number)
    assert var.accepted.startswith(var.parse.range), (var.accepted, var.parse.range)
    if var.fallback:
        assert var.default.startswith(f"`{var.fallback}`")
        assert var.parse(var.fallback, var.name) == int(var.fallback)


def test_env_example_shows_every_variable_but_the_lambda_ones() -> None:
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    shown = set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))
    assert shown == {v.name for v in VARIABLES if v.group != "lambda"}


def test_load_reads_its_rows_and_leaves_the_others_to_their_modules() -> None:
    """A bad value of a variable another module reads is that module's to report, when it reads it."""
    cfg = load({**BASE, **{v.name: "not valid" for v in VARIABLES if v.read_by != LOADER}})
    assert cfg.connections[0].name == "127.0.0.1"


def test_setting_parses_by_the_row() -> None:
    assert setting({}, "SHUTDOWN_GRACE_SECONDS") == 30
    assert setting({"SHUTDOWN_GRACE_SECONDS": " 7 "}, "SHUTDOWN_GRACE_SECONDS") == 7
    assert setting({"CRON_ENABLED": "off"}, "CRON_ENABLED") is False
    assert setting({"CRON_ENABLED": ""}, "CRON_ENABLED") is True  # empty counts as unset
    assert setting({}, "CRON_SCHEDULE") is None
    with pytest.raises(ConfigError, match=re.escape("TIME_HARD_MARGIN_SECONDS: 0 is out of range. Fix: use a number "
                                                    "from 1 to 900.")):
        setting({"TIME_HARD_MARGIN_SECONDS": "0"}, "TIME_HARD_MARGIN_SECONDS")


# --------------------------------------------------------------------------------------------------
# The rows of variables other modules still parse themselves: the same default, range and message.


def _grace(env: Mapping[str, str]) -> Any:
    return runner.make_runner(load({**BASE, **env}), backup=lambda stop, obs: runner.Outcome(0, "")).grace


def _cron_enabled(env: Mapping[str, str]) -> Any:
    made = runner.make_runner(load({**BASE, **env}), backup=lambda stop, obs: runner.Outcome(0, ""))
    return made.schedule is not None


def _max_age(env: Mapping[str, str]) -> Any:
    seen: list[int] = []

    def fetch(store: str, secret_id: str, max_age: int) -> str:
        seen.append(max_age)
        return "postgres://u@h/db"

    settings_secrets.resolve({"PG_URLS_SECRET_ID": "pgbkp/pg-urls", **env}, fetch)
    return seen[0]


def _fargate(env: Mapping[str, str]) -> dispatch.FargateSettings:
    """The function's Fargate settings, with the three a task needs set unless ``env`` gives its own."""
    base = {"FARGATE_CLUSTER": "pgbkp", "FARGATE_TASK_DEFINITION": "pgbkp-backup:1",
            "FARGATE_SUBNETS": "subnet-0123456789abcdef0"}
    settings = dispatch.FargateSettings.from_env({**base, **env})
    assert settings is not None
    return settings


READERS: dict[str, Callable[[Mapping[str, str]], Any]] = {
    "PG_LOCK_WAIT_TIMEOUT_SECONDS": lambda env: pipeline.lock_wait_timeout(load({**BASE, **env})),
    # Unset, the run picks its default from the CPUs and memory (tests/test_cpus.py); set, it is the row's.
    "DATABASE_CONCURRENCY": lambda env: (pipeline.database_concurrency(load({**BASE, **env}))
                                         if env.get("DATABASE_CONCURRENCY", "").strip() else None),
    "SHUTDOWN_GRACE_SECONDS": _grace,
    "CRON_ENABLED": _cron_enabled,
    "TIME_SAFETY_MARGIN_SECONDS": lambda env: handler_core.TimeLimits.from_env(env).safety_margin,
    "TIME_HARD_MARGIN_SECONDS": lambda env: handler_core.TimeLimits.from_env(env).hard_margin,
    "TIME_ESTIMATE_MB_PER_SECOND": lambda env: handler_core.TimeLimits.from_env(env).mb_per_second,
    "SECRETS_MAX_AGE_SECONDS": _max_age,
    "FARGATE_SUBNETS": lambda env: _fargate(env).subnets if env else None,
    "FARGATE_SECURITY_GROUPS": lambda env: _fargate(env).security_groups or None,
    "FARGATE_ASSIGN_PUBLIC_IP": lambda env: _fargate(env).assign_public_ip,
    # Read where it is decided: on with stdout, or with auto inside ECS; off otherwise.
    "PGBKP_EMF": lambda env: {(True, True): "stdout", (False, True): "auto", (False, False): "off"}[
        (cli.emf_to_stdout(env), cli.emf_to_stdout({**env, cli.ECS_MARKER: "http://169.254.170.2/v4/x"}))],
    "HTTP_ADDR": runner.http_address,
    "METRICS_TEXTFILE": metrics.textfile_path,
    "NOTIFY_ON": lambda env: notify.plan(load({**BASE, **env})).on,
    "NOTIFY_TIMEOUT_SECONDS": lambda env: notify.plan(load({**BASE, **env})).timeout,
}


def test_every_parsed_row_read_elsewhere_is_compared() -> None:
    assert set(READERS) == {v.name for v in VARIABLES if v.read_by != LOADER and v.parse is not None}


@pytest.mark.parametrize("name", READERS)
def test_a_module_that_reads_its_own_variable_agrees_with_the_row(name: str) -> None:
    var, reader = BY_NAME[name], READERS[name]
    assert reader({}) == setting({}, name)
    values = ["7", "false", "sometimes", "-1", "soon", "0"]
    if isinstance(var.parse, Number) and var.parse.maximum is not None:
        values += [str(var.parse.maximum), str(var.parse.maximum + 1)]
    for value in values:
        env = {name: value}
        try:
            expected: object = setting(env, name)
        except ConfigError as exc:
            with pytest.raises(ConfigError) as got:
                reader(env)
            assert str(got.value) == str(exc)
        else:
            assert reader(env) == expected, value


def test_the_documented_defaults_of_text_rows_are_their_modules() -> None:
    assert BY_NAME["CRON_SCHEDULE"].default == f"`{schedule.DEFAULT_SCHEDULE}`"
    assert BY_NAME["LOG_FILE"].default.startswith(f"`{logs.DEFAULT_LOG_FILE}`")
    assert BY_NAME["HEALTH_FILE"].default.startswith(f"`{health.DEFAULT_HEALTH_FILE}`")
    assert BY_NAME["PG_LOCK_WAIT_TIMEOUT_SECONDS"].fallback == str(postgres.DEFAULT_LOCK_WAIT_TIMEOUT)
    assert BY_NAME["SHUTDOWN_GRACE_SECONDS"].fallback == str(runner.DEFAULT_GRACE_SECONDS)
    assert BY_NAME["SECRETS_MAX_AGE_SECONDS"].fallback == str(settings_secrets.DEFAULT_MAX_AGE)
    assert {m for m in handler_core.LOCAL_MARKERS if m != "AWS_SAM_LOCAL"} <= set(BY_NAME)  # SAM sets its own
