"""docker-compose.yml and .env.example: valid Compose, the runner wired as documented, and no variable that
pg-bkp does not read (a typo there would be silently ignored by everyone)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgbkp import config, runner
from tests.helpers import ROOT

COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
#: Variables the example services' own images read (not pg-bkp's).
IMAGE_VARIABLES = {"POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}
#: What pg-bkp reads that does not belong in a runner's .env: the Lambda edge and its secret lookups.
LAMBDA_ONLY = {"AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "POWERTOOLS_SERVICE_NAME"} | {
    v.name for v in config.VARIABLES if v.group == "lambda"}
LAMBDA_ONLY_PATTERNS = {r"[A-Z0-9_]+_SECRET_ID"}
#: Locale variables taken out of psql's environment (so its messages can be recognised): not settings.
CHILD_LOCALE = {"LC_ALL", "LANGUAGE"}


def env_names_read_by_the_code() -> set[str]:
    """Every environment variable name handler/ reads, as regular expressions (f-strings make patterns).

    A read is ``env.get("X")``, ``os.environ.get("X")``, ``config.env.get("X")``, ``env["X"]``, or a helper
    called as ``f(env, "X")``.
    """
    envlike = {"env", "environ", "environment"}

    def is_env(node: ast.AST) -> bool:
        return (isinstance(node, ast.Name) and node.id in envlike) or (
            isinstance(node, ast.Attribute) and node.attr in envlike)

    def pattern(node: ast.AST) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return re.escape(node.value)
        if isinstance(node, ast.JoinedStr):
            return "".join(re.escape(v.value) if isinstance(v, ast.Constant) else "[A-Z0-9_]+" for v in node.values)
        return None

    found: set[str] = set()
    for path in (ROOT / "handler").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            candidates: list[ast.AST] = []
            if isinstance(node, ast.Call):
                f = node.func
                if isinstance(f, ast.Attribute) and f.attr in ("get", "pop", "getenv") and node.args and (
                        is_env(f.value) or f.attr == "getenv"):
                    candidates.append(node.args[0])
                if len(node.args) > 1 and is_env(node.args[0]):
                    candidates.append(node.args[1])
            elif isinstance(node, ast.Subscript) and is_env(node.value) and isinstance(node.ctx, ast.Load):
                candidates.append(node.slice)
            found |= {p for p in map(pattern, candidates) if p and re.fullmatch(r"[A-Z0-9_\[\]+\\-]+", p)}
    # pgbkp.config reads its own variables by each row's name (config/variables.py), not as literals.
    found |= {re.escape(v.name) for v in config.VARIABLES if v.read_by == "config"}
    return found


def example_env() -> dict[str, str]:
    """The active KEY=value lines of .env.example."""
    out = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def documented_names() -> set[str]:
    """Every variable .env.example sets or shows commented out (``# KEY=value``)."""
    return set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(encoding="utf-8"), re.MULTILINE))


def is_read(name: str, patterns: set[str]) -> bool:
    return any(re.fullmatch(p, name) for p in patterns)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compose file with .env.example as its .env, as a user sets it up."""
    where = tmp_path_factory.mktemp("compose")
    shutil.copy(COMPOSE, where / "docker-compose.yml")
    shutil.copy(ENV_EXAMPLE, where / ".env")
    return where


def compose_config(where: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is missing: apt-get install docker-compose (it needs no Docker engine for config)"
    return subprocess.run([exe, "config"], cwd=where, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def resolved(project: Path) -> dict[str, Any]:
    out = compose_config(project)
    assert out.returncode == 0, out.stderr
    doc: dict[str, Any] = yaml.safe_load(out.stdout)
    return doc


def test_compose_file_validates(resolved: dict[str, Any]) -> None:
    assert set(resolved["services"]) == {"pg-backup", "postgres", "minio", "create-bucket"}


def test_the_validator_really_validates(project: Path, tmp_path: Path) -> None:
    shutil.copy(project / ".env", tmp_path / ".env")
    text = COMPOSE.read_text(encoding="utf-8").replace("stop_grace_period:", "stop_grace_periode:")
    (tmp_path / "docker-compose.yml").write_text(text, encoding="utf-8")
    out = compose_config(tmp_path)
    assert out.returncode != 0 and "stop_grace_periode" in out.stderr


def test_runner_service_is_the_same_image_with_serve(resolved: dict[str, Any], project: Path) -> None:
    svc = resolved["services"]["pg-backup"]
    assert svc["build"]["context"] == str(project)  # the repository's Dockerfile
    assert (ROOT / "Dockerfile").exists()
    assert svc["entrypoint"] == ["pgbkp"] and svc["command"] == ["serve"]
    assert svc["healthcheck"]["test"] == ["CMD", "pgbkp", "health"]
    assert svc["volumes"] == [f"{project}/logs:/var/log:rw", f"{project}/temp:/tmp:rw",
                              "/etc/localtime:/etc/localtime:ro"]
    assert svc["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                 "create-bucket": {"condition": "service_completed_successfully"}}
    # docker stop must wait longer than the runner's own grace period before it kills.
    grace = int(example_env().get("SHUTDOWN_GRACE_SECONDS") or runner.DEFAULT_GRACE_SECONDS)
    assert int(svc["stop_grace_period"].rstrip("s")) > grace
    # env_file .env, so the resolved environment is exactly .env.example's active lines
    assert svc["environment"] == {k: v for k, v in example_env().items()}


def test_example_services(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert services["postgres"]["image"] == "postgres:18"
    assert services["minio"]["image"].startswith("minio/minio:RELEASE.")
    for name in ("pg-backup", "postgres", "minio"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    bucket = services["create-bucket"]
    assert bucket["depends_on"] == {"minio": {"condition": "service_healthy"}}
    assert "mc mb --ignore-existing" in " ".join(bucket["command"])
    assert bucket["environment"]["S3_BUCKET"] == example_env()["S3_BUCKET"]
    # The example credentials line up: PG_URLS's password is the postgres service's, MinIO's root
    # user is the runner's S3 key pair.
    url = config.load(example_env()).connections[0].pg
    assert url.password is not None
    assert url.password.reveal() == services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert url.host == "postgres"
    assert services["minio"]["environment"] == {"MINIO_ROOT_USER": example_env()["S3_ACCESS_KEY"],
                                                "MINIO_ROOT_PASSWORD": example_env()["S3_SECRET_KEY"]}
    assert urllib.parse.urlsplit(example_env()["S3_ENDPOINT"]).hostname == "minio"


def test_compose_names_only_variables_the_program_reads(resolved: dict[str, Any]) -> None:
    read = env_names_read_by_the_code()
    assert {"PG_URLS", "CRON_SCHEDULE", "HEALTHCHECK_URL", "S3_ACCESS_KEY"} <= {p for p in read if p.isupper()}
    text = COMPOSE.read_text(encoding="utf-8")
    interpolated = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    assert interpolated, "expected ${VAR} interpolations"
    named = interpolated | set(resolved["services"]["pg-backup"]["environment"])
    for svc in resolved["services"].values():
        named |= set(svc.get("environment", {})) - IMAGE_VARIABLES
    unknown = sorted(n for n in named if not is_read(n, read))
    assert unknown == [], f"docker-compose.yml names variables pg-bkp never reads: {unknown}"


def test_env_example_documents_every_variable_and_only_those() -> None:
    read = env_names_read_by_the_code()
    documented = documented_names()
    unknown = sorted(n for n in documented if not is_read(n, read))
    assert unknown == [], f".env.example documents variables pg-bkp never reads: {unknown}"
    runner_side = {p for p in read if p not in LAMBDA_ONLY | CHILD_LOCALE and p not in LAMBDA_ONLY_PATTERNS}
    missing = sorted(p for p in runner_side if not any(re.fullmatch(p, n) for n in documented))
    assert missing == [], f"variables pg-bkp reads that .env.example does not document: {missing}"
    assert {"RETENTION_DAYS", "RETENTION_WEEKS", "RETENTION_MONTHS"} <= documented


def test_env_example_is_a_working_runner_configuration() -> None:
    cfg = config.load(example_env())
    r = runner.make_runner(cfg, backup=lambda stop, obs: runner.Outcome(0, ""))
    assert r.schedule is not None and r.schedule.expression == "0 3 * * *"
    assert r.grace == runner.DEFAULT_GRACE_SECONDS
