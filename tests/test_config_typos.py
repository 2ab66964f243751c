"""Variables that look like pg-bkp's but are not (issue 12): a misspelt ZIP_PASSWORD used to be ignored
without a word, and the backup went out unencrypted. Now each gets one warning naming the setting meant,
other tools' names say what to use instead, and the standard environments pg-bkp runs in draw none.

Pure logic: no server. The real command's output is in test_config_cli.py.
"""

from __future__ import annotations

import logging

import pytest

from pgbkp.config import VARIABLES, ConfigError, load, typo_warnings
from pgbkp.config.typos import FAMILIES, MIGRATIONS

URL = "postgres://u:pw@db.example.com:5432/postgres"
BASE = {"PG_URLS": URL, "S3_BUCKET": "bkt-1"}
SECRET = "Qz8!vT3#mW6&pL1"

pytestmark = pytest.mark.usefixtures("forget_test_secrets")


@pytest.mark.parametrize(("name", "line"), [
    ("ZIP_PASSWROD", "ZIP_PASSWROD is not a pg-bkp setting and is ignored. Did you mean ZIP_PASSWORD?"),
    ("ZIPPASSWORD", "ZIPPASSWORD is not a pg-bkp setting and is ignored. Did you mean ZIP_PASSWORD?"),
    ("RETENTION_DAY", "RETENTION_DAY is not a pg-bkp setting and is ignored. Did you mean RETENTION_DAYS?"),
    ("S3_BUCKET_NAME", "S3_BUCKET_NAME is not a pg-bkp setting and is ignored. Did you mean S3_BUCKET?"),
    ("S3_ENDPOINT_URL", "S3_ENDPOINT_URL is not a pg-bkp setting and is ignored. Did you mean S3_ENDPOINT?"),
    ("PGURLS", "PGURLS is not a pg-bkp setting and is ignored. Did you mean PG_URLS?"),
    ("TIME_ZONE", "TIME_ZONE is not a pg-bkp setting and is ignored. Did you mean TIMEZONE?"),
    ("LOGLEVEL", "LOGLEVEL is not a pg-bkp setting and is ignored. Did you mean LOG_LEVEL?"),
    ("HEALTH_CHECK_URL", "HEALTH_CHECK_URL is not a pg-bkp setting and is ignored. Did you mean HEALTHCHECK_URL?"),
    ("SHUTDOWN_GRACE", "SHUTDOWN_GRACE is not a pg-bkp setting and is ignored. Did you mean SHUTDOWN_GRACE_SECONDS?"),
    ("zip_password", "zip_password is not a pg-bkp setting and is ignored (names are case-sensitive). Did you mean "
                     "ZIP_PASSWORD?"),
    ("CRON_EXPRESSION", "CRON_EXPRESSION is not a pg-bkp setting and is ignored. The CRON_ settings are CRON_ENABLED, "
                        "CRON_SCHEDULE."),
    ("S3_USE_SSL", "S3_USE_SSL is not a pg-bkp setting and is ignored. The S3_ settings are listed in "
                   "docs/configuration.md."),
])
def test_a_likely_typo_names_the_setting(name: str, line: str) -> None:
    assert typo_warnings({name: "x"}) == [line]


@pytest.mark.parametrize(("name", "line"), [
    ("SCHEDULE", "SCHEDULE is a postgres-backup-s3 and postgres-backup-local setting, not pg-bkp's, and is "
                 "ignored. Use CRON_SCHEDULE instead: 5 fields (no seconds) or @hourly, @daily, @weekly, @monthly "
                 "(not @every)."),
    ("BACKUP_KEEP_DAYS", "BACKUP_KEEP_DAYS is a postgres-backup-s3 and postgres-backup-local setting, not pg-bkp's, "
                         "and is ignored. Use RETENTION_DAYS instead: it keeps today and the N-1 calendar days "
                         "before."),
    ("PASSPHRASE", "PASSPHRASE is a postgres-backup-s3 setting, not pg-bkp's, and is ignored. Use ZIP_PASSWORD "
                   "instead: backups become AES-256 ZIP files instead of GPG files."),
    ("S3_PREFIX", "S3_PREFIX is a postgres-backup-s3 setting, not pg-bkp's, and is ignored. Use GLOBAL_PREFIX "
                  "instead: or prefix= in a PG_URLS item."),
    ("S3_ACCESS_KEY_ID", "S3_ACCESS_KEY_ID is a postgres-backup-s3 setting, not pg-bkp's, and is ignored. Use "
                         "S3_ACCESS_KEY instead: set with S3_SECRET_KEY."),
    ("S3_S3V4", "S3_S3V4 is a postgres-backup-s3 setting, not pg-bkp's, and is ignored: not needed: pg-bkp always "
                "signs S3 requests with Signature Version 4."),
    ("POSTGRES_HOST", "POSTGRES_HOST is a postgres-backup-s3 and postgres-backup-local setting, not pg-bkp's, and is "
                      "ignored. Use PG_URLS instead: one postgres://USER:PASSWORD@HOST:PORT/DATABASE per server, the "
                      "password percent-encoded."),
    ("DATABASE_URL", "DATABASE_URL is not a pg-bkp setting and is ignored. Use PG_URLS instead: several servers "
                     "separated by commas."),
])
def test_another_tools_setting_says_what_to_use(name: str, line: str) -> None:
    assert typo_warnings({name: "x"}) == [line]


#: Environments pg-bkp runs in, by name only (measured, not guessed): this machine's `env`; the Lambda
#: runtime's (AWS "Defined runtime environment variables", plus the image's own); the postgres and
#: python images'; libpq's; Kubernetes service links for Services named s3, postgres and pg; CI runners';
#: an interactive shell's.
STANDARD_ENVIRONMENTS = {
    "this machine": "AWS_CA_BUNDLE CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE CLOUD_SDK_VERSION CONTAINER_NAME CURL_CA_BUNDLE "
                    "DEBIAN_FRONTEND GIT_SSL_CAINFO GRPC_DEFAULT_SSL_ROOTS_FILE_PATH HOME HTTPLIB2_CA_CERTS IS_SANDBOX "
                    "LANG NIX_SSL_CERT_FILE NODE_EXTRA_CA_CERTS NVPL_BLAS_DEBUG_CPU_TYPE OLDPWD PATH PIP_CERT "
                    "PIP_DEFAULT_TIMEOUT PIP_DISABLE_PIP_VERSION_CHECK PIP_FIND_LINKS PWD PYENV_ROOT "
                    "PYTHONDONTWRITEBYTECODE PYTHONUNBUFFERED REQUESTS_CA_BUNDLE RUSTUP_AUTO_INSTALL RUST_BACKTRACE "
                    "SHELL SHLVL SSL_CERT_DIR SSL_CERT_FILE TERM TF_CLI_CONFIG_FILE _",
    "Lambda": "_HANDLER _X_AMZN_TRACE_ID AWS_DEFAULT_REGION AWS_REGION AWS_EXECUTION_ENV AWS_LAMBDA_FUNCTION_NAME "
              "AWS_LAMBDA_FUNCTION_MEMORY_SIZE AWS_LAMBDA_FUNCTION_VERSION AWS_LAMBDA_INITIALIZATION_TYPE "
              "AWS_LAMBDA_LOG_GROUP_NAME AWS_LAMBDA_LOG_STREAM_NAME AWS_ACCESS_KEY AWS_ACCESS_KEY_ID "
              "AWS_SECRET_ACCESS_KEY AWS_SECRET_KEY AWS_SECURITY_TOKEN AWS_SESSION_TOKEN AWS_LAMBDA_RUNTIME_API "
              "LAMBDA_TASK_ROOT LAMBDA_RUNTIME_DIR TZ LANG PATH LD_LIBRARY_PATH PYTHONPATH NODE_PATH "
              "AWS_XRAY_CONTEXT_MISSING AWS_XRAY_DAEMON_ADDRESS _AWS_XRAY_DAEMON_ADDRESS _AWS_XRAY_DAEMON_PORT "
              "AWS_LAMBDA_LOG_FORMAT AWS_LAMBDA_LOG_LEVEL AWS_LAMBDA_EXEC_WRAPPER AWS_LAMBDA_MAX_CONCURRENCY "
              "AWS_CONTAINER_CREDENTIALS_FULL_URI AWS_CONTAINER_AUTHORIZATION_TOKEN POWERTOOLS_SERVICE_NAME "
              "POWERTOOLS_METRICS_NAMESPACE PYTHONDONTWRITEBYTECODE AWS_SAM_LOCAL AWS_ENDPOINT_URL "
              "AWS_ENDPOINT_URL_S3 AWS_PROFILE AWS_MAX_ATTEMPTS AWS_RETRY_MODE",
    "images": "PG_MAJOR PG_VERSION PGDATA GOSU_VERSION HOSTNAME PYTHON_VERSION PYTHON_PIP_VERSION PYTHON_SHA256 "
              "GPG_KEY",
    "libpq": "PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGPASSWORD PGPASSFILE PGSERVICE PGSSLMODE PGSSLROOTCERT "
             "PGAPPNAME PGCONNECT_TIMEOUT PGOPTIONS PGTZ PG_COLOR PG_COLORS",
    "Kubernetes": "KUBERNETES_SERVICE_HOST KUBERNETES_SERVICE_PORT KUBERNETES_SERVICE_PORT_HTTPS KUBERNETES_PORT "
                  "KUBERNETES_PORT_443_TCP KUBERNETES_PORT_443_TCP_ADDR S3_SERVICE_HOST S3_SERVICE_PORT "
                  "S3_SERVICE_PORT_API S3_PORT S3_PORT_9000_TCP S3_PORT_9000_TCP_ADDR S3_PORT_9000_TCP_PROTO "
                  "POSTGRES_SERVICE_HOST POSTGRES_SERVICE_PORT POSTGRES_PORT POSTGRES_PORT_5432_TCP_ADDR "
                  "PG_SERVICE_HOST PG_PORT PG_PORT_5432_TCP_ADDR",
    "CI": "CI GITHUB_ACTIONS GITHUB_WORKSPACE GITHUB_SHA GITHUB_REF GITHUB_ENV GITHUB_OUTPUT GITHUB_PATH RUNNER_OS "
          "RUNNER_TEMP RUNNER_TOOL_CACHE ACTIONS_RUNNER_DEBUG ImageOS ImageVersion JAVA_HOME CI_JOB_ID GITLAB_CI",
    "a shell": "USER LOGNAME MAIL EDITOR VISUAL PAGER LESS DISPLAY SSH_AUTH_SOCK SSH_CLIENT SSH_CONNECTION SSH_TTY "
               "XDG_RUNTIME_DIR XDG_CONFIG_HOME DBUS_SESSION_BUS_ADDRESS COLORTERM TERM_PROGRAM VIRTUAL_ENV "
               "HISTSIZE HISTFILE HISTTIMEFORMAT TMPDIR TMUX LS_COLORS MANPATH GOPATH HTTP_PROXY HTTPS_PROXY NO_PROXY "
               "http_proxy https_proxy no_proxy LANGUAGE LC_ALL LC_CTYPE LC_MESSAGES TIME_STYLE TIMEFORMAT SUDO_USER "
               "INVOCATION_ID JOURNAL_STREAM LOG_DIR LOG_PATH DOCKER_HOST COMPOSE_PROJECT_NAME ZIPOPT UNZIP",
}


@pytest.mark.parametrize("where", STANDARD_ENVIRONMENTS)
def test_no_warning_for_the_environments_pg_bkp_runs_in(where: str) -> None:
    assert typo_warnings(dict.fromkeys(STANDARD_ENVIRONMENTS[where].split(), "x")) == []


def test_every_setting_is_known_and_warns_about_nothing() -> None:
    assert typo_warnings({v.name: "x" for v in VARIABLES}) == []


def test_every_setting_has_a_family() -> None:
    """A misspelling keeps the prefix, and the prefix lowers the bar: a new variable needs one."""
    assert [v.name for v in VARIABLES if not v.name.startswith(FAMILIES)] == []


def test_no_migration_name_is_a_setting() -> None:
    assert {m.name for m in MIGRATIONS} & {v.name for v in VARIABLES} == set()


def test_the_value_is_never_shown() -> None:
    lines = typo_warnings({"ZIP_PASSWROD": SECRET, "PASSPHRASE": SECRET, "S3_USE_SSL": SECRET, "zip_password": SECRET})
    assert len(lines) == 4
    text = "\n".join(lines)
    assert not [SECRET[i:i + 4] for i in range(len(SECRET) - 3) if SECRET[i:i + 4] in text]


def test_load_returns_the_warnings_in_order_and_logs_each_once(caplog: pytest.LogCaptureFixture) -> None:
    """Names first (in name order), then the values worth a word: the storage class, then the password."""
    env = {**BASE, "ZIP_PASSWROD": SECRET, "PASSPHRASE": SECRET, "ZIP_PASSWORD": "short", "S3_STORAGE_CLASS": "glacier"}
    with caplog.at_level(logging.WARNING, logger="pgbkp.config"):
        cfg = load(env)
    assert cfg.warnings == (
        "PASSPHRASE is a postgres-backup-s3 setting, not pg-bkp's, and is ignored. Use ZIP_PASSWORD instead: backups "
        "become AES-256 ZIP files instead of GPG files.",
        "ZIP_PASSWROD is not a pg-bkp setting and is ignored. Did you mean ZIP_PASSWORD?",
        "S3_STORAGE_CLASS: GLACIER backups must be restored from the archive tier (hours, and a request per object) "
        "before pgbkp restore or verify can read them. GLACIER_IR reads at once.",
        "ZIP_PASSWORD: shorter than 12 characters, so anyone holding an archive can guess it offline. Fix: use a "
        "passphrase of 12 characters or more.",
    )
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("pgbkp.config", "WARNING", line) for line in cfg.warnings]


def test_a_caller_that_sets_up_logging_later_logs_them_then(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pgbkp.config"):
        cfg = load({**BASE, "RETENTION_DAY": "7"}, log_warnings=False)
        assert caplog.records == []
        cfg.log_warnings()
    assert caplog.messages == ["RETENTION_DAY is not a pg-bkp setting and is ignored. Did you mean RETENTION_DAYS?"]


def test_an_item_storage_class_warns_with_its_item() -> None:
    cfg = load({**BASE, "PG_URLS": f"a|storage_class=deep_archive|{URL}"})
    assert cfg.warnings == (
        "PG_URLS item 1 (a): field 'storage_class': DEEP_ARCHIVE backups must be restored from the archive tier "
        "(hours, and a request per object) before pgbkp restore or verify can read them. GLACIER_IR reads at once.",)


def test_a_mistake_reports_the_error_and_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A configuration error is the one line printed: warnings about the same run would only bury it."""
    with caplog.at_level(logging.WARNING, logger="pgbkp.config"), pytest.raises(ConfigError, match=r"^RETENTION_DAYS:"):
        load({**BASE, "RETENTION_DAYS": "seven", "ZIP_PASSWROD": SECRET})
    assert caplog.records == []
