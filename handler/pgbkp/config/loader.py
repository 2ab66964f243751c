"""load(): the environment, read once through the table of variables, into a checked :class:`Config`."""

from __future__ import annotations

import os
from collections.abc import Mapping

from pgbkp.config.connections import connection, name_connections
from pgbkp.config.model import AgeRecipients, Config, S3Settings
from pgbkp.config.pgurls import split_item, split_items
from pgbkp.config.typos import typo_warnings
from pgbkp.config.values import ConfigError, archive_tier_warning, show, unwrap_secret
from pgbkp.config.variables import LOADER, VARIABLES, read

TYPE_CHECKING = False  # as in variables.py: no typing import at run time
if TYPE_CHECKING:
    from typing import Any

#: A ZIP password shorter than this draws a warning: anyone holding the archive can guess offline.
MIN_ZIP_PASSWORD = 12


def load(env: Mapping[str, str] | None = None, *, log_warnings: bool = True) -> Config:
    """Read and check the whole configuration. Raises ConfigError on the first mistake.

    What deserves a word but is no mistake goes to ``Config.warnings``; ``log_warnings`` logs them now.
    A caller that sets up logging only after load() passes False and calls ``Config.log_warnings()`` then.
    """
    env = dict(os.environ if env is None else env)
    # ECS (the Fargate task's Secrets) and Kubernetes hand over a secret's whole string, which may be the
    # JSON key/value form the Lambda function unwraps when it fetches the secret itself: the same here.
    # PG_URLS never starts with "{"; a password is any text, so only its own key is taken out.
    for name, strict in (("PG_URLS", True), ("ZIP_PASSWORD", False)):
        if name in env:
            env[name] = unwrap_secret(name, env[name], strict=strict)
    warnings = typo_warnings(env)
    # In the table's order, so the first mistake reported is the first in the reference.
    v: dict[str, Any] = {var.name: read(env, var) for var in VARIABLES if var.read_by == LOADER}

    access, secret = v["S3_ACCESS_KEY"], v["S3_SECRET_KEY"]
    if bool(access) != bool(secret):
        given, missing = ("S3_ACCESS_KEY", "S3_SECRET_KEY") if access else ("S3_SECRET_KEY", "S3_ACCESS_KEY")
        raise ConfigError(f"{given}: set without {missing}. Fix: set both, or neither (then the AWS role "
                          "or default credentials are used).")
    sse, kms_key = v["S3_SSE"], v["S3_SSE_KMS_KEY_ID"]
    if kms_key is not None and sse != "aws:kms":
        raise ConfigError(f"S3_SSE_KMS_KEY_ID: {show(kms_key, 200)} is set, but S3_SSE is "
                          f"{show(sse) if sse else 'unset'}, and a KMS key applies only to aws:kms. "
                          "Fix: set S3_SSE=aws:kms, or unset S3_SSE_KMS_KEY_ID.")
    storage_warning = archive_tier_warning(v["S3_STORAGE_CLASS"], "S3_STORAGE_CLASS")
    if storage_warning:
        warnings.append(storage_warning)
    glob_s3 = S3Settings(
        endpoint=v["S3_ENDPOINT"],
        region=v["S3_REGION"],
        access_key=access,
        secret_key=secret,
        force_path_style=v["S3_FORCE_PATH_STYLE"],
        checksum=v["S3_CHECKSUM"],
        max_attempts=v["S3_MAX_ATTEMPTS"],
        part_size=v["S3_PART_SIZE_MB"] * 1024 * 1024,
        concurrency=v["S3_UPLOAD_CONCURRENCY"],
        storage_class=v["S3_STORAGE_CLASS"],
        sse=sse,
        sse_kms_key_id=kms_key,
    )
    retention = {unit: v[f"RETENTION_{unit.upper()}"] for unit in ("days", "weeks", "months", "keep_last")}
    ignore = v["IGNORE_DATABASES"] or frozenset()

    raw = v["PG_URLS"] or ""
    if not raw.strip():
        raise ConfigError("PG_URLS: not set. Fix: PG_URLS=postgres://user:pass@host:5432/postgres "
                          "(several connections separated by commas).")
    items = [split_item(text, n) for n, text in enumerate(split_items(raw), start=1)]
    age_sources = ((("AGE_RECIPIENTS", v["AGE_RECIPIENTS"]),) if v["AGE_RECIPIENTS"] else ()) + (
        (v["AGE_RECIPIENTS_FILE"],) if v["AGE_RECIPIENTS_FILE"] else ())
    age = AgeRecipients(age_sources) if age_sources else None
    connections = name_connections([
        connection(item, glob_s3, v["S3_BUCKET"], ignore, retention, v["S3_OBJECT_LOCK_MODE"], warnings,
                   v["BACKUP_GLOBALS"], v["PG_DUMP_ARGS"] or (), age)
        for item in items
    ])

    password = v["ZIP_PASSWORD"]
    if password and len(password.reveal()) < MIN_ZIP_PASSWORD:
        # Neither the password nor its length: both would help a guesser.
        warnings.append(f"ZIP_PASSWORD: shorter than {MIN_ZIP_PASSWORD} characters, so anyone holding an archive "
                        f"can guess it offline. Fix: use a passphrase of {MIN_ZIP_PASSWORD} characters or more.")
    config = Config(
        connections=tuple(connections),
        timezone=v["TIMEZONE"],
        global_prefix=v["GLOBAL_PREFIX"] or "",
        zip_password=password,
        compression_level=v["ZIP_COMPRESSION_LEVEL"],
        compression_threads=v["COMPRESSION_THREADS"],
        log_level=v["LOG_LEVEL"],
        pg_bindir=v["PG_BIN_DIR"],
        env=env,
        log_format=v["LOG_FORMAT"],
        warnings=tuple(warnings),
    )
    if log_warnings:
        config.log_warnings()
    return config
