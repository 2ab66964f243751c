"""Every environment variable pg-bkp reads, in one table: the single source of its name, its parser, its
default and its row in docs/configuration.md ("All variables", written by ``python -m pgbkp.config.docs``).

``load()`` reads the rows whose ``read_by`` is ``config``; the others belong to the module named there,
which reads its row when it needs it, through :func:`setting`, so that every name, range and default
is written once. The typo check (:mod:`pgbkp.config.typos`) knows every name here.
"""

from __future__ import annotations

import os
import re
import stat
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pgbkp.config.dumpargs import parse_dump_args
from pgbkp.config.model import (
    DEFAULT_COMPRESSION_LEVEL,
    DEFAULT_PART_SIZE_MB,
    DEFAULT_TIMEZONE,
    DEFAULT_UPLOAD_CONCURRENCY,
)
from pgbkp.config.values import (
    CHECKSUM_MODES,
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_KEEP_LAST,
    MAX_RETENTION,
    ConfigError,
    check_bucket,
    check_endpoint,
    check_kms_key_id,
    check_lock_mode,
    check_region,
    check_sse,
    check_storage_class,
    parse_bool,
    parse_int,
    show,
    split_list,
)
from pgbkp.redact import Secret

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: `import pgbkp.config` stays fast
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    #: (value, variable name) -> the setting; raises ConfigError naming the variable and the fix.
    Parser: TypeAlias = Callable[[str, str], Any]
#: ``read_by`` of the rows load() reads itself.
LOADER = "config"
#: NOTIFY_ON: when a run sends its message (pgbkp.notify).
NOTIFY_ON_CHOICES = ("failure", "always", "never")


class Number:
    """A whole number from ``minimum`` to ``maximum`` (None: no upper bound): a parser that knows its range.
    A plain class, not a dataclass: making one costs import time, and this needs no generated methods."""

    __slots__ = ("maximum", "minimum")

    def __init__(self, minimum: int = 0, maximum: int | None = None) -> None:
        self.minimum, self.maximum = minimum, maximum

    def __call__(self, value: str, name: str) -> int:
        return parse_int(value, name, minimum=self.minimum, maximum=self.maximum)

    @property
    def range(self) -> str:
        """The bounds as the reference writes them, ``1–20`` or ``0 or more``."""
        return f"{self.minimum}–{self.maximum}" if self.maximum is not None else f"{self.minimum} or more"


class Choice:
    """One of ``choices``, case-insensitive, given back in lower case: a parser that knows its words.
    ``noun`` finishes the refusal (``'x' is not valid``, ``'x' is not an EMF mode``)."""

    __slots__ = ("choices", "noun")

    def __init__(self, choices: tuple[str, ...], noun: str = "valid") -> None:
        self.choices, self.noun = choices, noun

    def __call__(self, value: str, name: str) -> str:
        choice = value.lower()
        if choice not in self.choices:
            raise ConfigError(f"{name}: {show(choice)} is not {self.noun}. Fix: use one of {', '.join(self.choices)}.")
        return choice


@dataclass(frozen=True)
class Variable:
    """One environment variable. The text fields are the reference's columns, in Markdown."""

    name: str
    group: str
    meaning: str
    accepted: str
    default: str
    #: None: the value is taken as text.
    parse: Parser | None = None
    #: What an unset or empty variable parses as; "" means the setting is None.
    fallback: str = ""
    #: The module that reads it: ``config`` (load() does), or the one that calls :func:`setting`.
    read_by: str = LOADER
    #: Keep the value exactly, spaces included (a password); otherwise it is stripped.
    exact: bool = False


def read(env: Mapping[str, str], var: Variable) -> Any:
    """The variable's setting in ``env``: parsed, its fallback when unset or empty, else None."""
    raw = env.get(var.name, "")
    text = raw if var.exact else raw.strip()
    if not text:
        text = var.fallback
    if not text:
        return None
    return var.parse(text, var.name) if var.parse else text


def setting(env: Mapping[str, str], name: str) -> Any:
    """One variable's setting, parsed by its row: for the modules that read theirs when they need it."""
    return read(env, BY_NAME[name])


# --------------------------------------------------------------------------------------------------
# Parsers of the values that are more than a number or a check from values.py


def _timezone(value: str, name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(
            f"{name}: unknown time zone {show(value)}. Fix: use an IANA name such as America/Sao_Paulo or UTC."
        ) from None


def _log_level(value: str, name: str) -> str:
    level = value.upper()
    level = "WARNING" if level == "WARN" else level
    if level not in LOG_LEVELS:
        raise ConfigError(f"{name}: {show(level)} is not a level. Fix: use {', '.join(LOG_LEVELS)}.")
    return level


def _log_format(value: str, name: str) -> str:
    fmt = value.lower()
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"{name}: {show(fmt)} is not a format. Fix: use text or json "
                          "(or leave it unset: text on a terminal, JSON elsewhere).")
    return fmt


def _bin_dir(value: str, name: str) -> Path:
    for tool in ("pg_dump", "psql"):
        if not Path(value, tool).exists():
            raise ConfigError(f"{name}: no {tool} in {show(value)}. "
                              "Fix: point it at the PostgreSQL client's bin folder, or unset it.")
    return Path(value)


def _global_prefix(value: str, name: str) -> str:
    segments = [p for p in value.split("/") if p.strip()]
    prefix = "/".join(segments)
    if not prefix.isprintable():
        raise ConfigError(f"{name}: {show(prefix)} contains control characters. "
                          "Fix: use letters, digits, - _ . and /.")
    if any(p in (".", "..") for p in segments):
        raise ConfigError(f"{name}: {show(prefix)} has a '.' or '..' folder, which would put keys "
                          "outside the prefix or make two names for one folder. Fix: use plain folder names, "
                          "such as backups/prod.")
    return prefix


def _names(value: str, name: str) -> frozenset[str]:
    return split_list(value)


def _secret(value: str, name: str) -> Secret:
    return Secret(value)


def _access_key(value: str, name: str) -> Secret:
    return Secret(value, scrub=False)  # an identifier, not a secret


class AwsIds:
    """Comma-separated AWS ids of one kind (``subnet-…``, ``sg-…``), each checked, duplicates dropped."""

    __slots__ = ("example", "pattern")

    def __init__(self, prefix: str) -> None:
        self.pattern = re.compile(rf"{prefix}-[0-9a-f]{{8,17}}")
        self.example = f"{prefix}-0123456789abcdef0"

    def __call__(self, value: str, name: str) -> tuple[str, ...]:
        items = tuple(dict.fromkeys(x.strip() for x in value.split(",") if x.strip()))
        for item in items:
            if not self.pattern.fullmatch(item):
                raise ConfigError(f"{name}: {show(item)} is not an id of that kind. Fix: comma-separated ids "
                                  f"such as {self.example}.")
        return items


#: Where ``HTTP_ADDR=true`` listens: this machine only, on the port the Prometheus exporter registry lists for us.
DEFAULT_HTTP_ADDR = ("127.0.0.1", 9187)


def _http_addr(value: str, name: str) -> tuple[str, int] | None:
    """``true``: 127.0.0.1:9187; ``false``: off; ``host:port`` (``[::1]:port`` for IPv6): there."""
    low = value.lower()
    if low in ("true", "1", "yes", "on"):
        return DEFAULT_HTTP_ADDR
    if low in ("false", "0", "no", "off"):
        return None
    fix = ("Fix: use true (127.0.0.1:9187), false, or HOST:PORT such as 127.0.0.1:9187 or [::1]:9187 "
           "(0.0.0.0:9187 listens on every interface).")
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or any(c.isspace() for c in host):
        raise ConfigError(f"{name}: {show(value)} is not HOST:PORT. {fix}")
    if not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{name}: the port in {show(value)} is not a number from 0 to 65535. {fix}")
    return host, int(port)


def _textfile(value: str, name: str) -> Path:
    """node_exporter's textfile collector reads ``*.prom`` files only, from a folder that must exist."""
    path = Path(value)
    if path.suffix != ".prom":
        raise ConfigError(f"{name}: {show(value)} does not end in .prom, and node_exporter's textfile collector "
                          "reads only *.prom files. Fix: e.g. /var/lib/node_exporter/textfile/pgbkp.prom.")
    if not path.parent.is_dir():
        raise ConfigError(f"{name}: the folder of {show(value)} does not exist. Fix: create it, or point "
                          f"{name} at the textfile collector's folder (node_exporter --collector.textfile.directory).")
    return path


#: A recipients file larger than this is refused rather than cut short (16 000 age1… keys fit in it).
MAX_RECIPIENTS_FILE_BYTES = 1 << 20


def _recipients_file(value: str, name: str) -> tuple[str, str]:
    """(where, text): the file is read now, so that a missing one fails at start-up; its content is public
    keys, checked with pyrage when a backup starts (pgbkp.pipeline.age_recipients). A pipe is read (as
    ``age -R <(…)``), but a named FIFO is opened without waiting for a writer (none: it reads as empty); a
    device or a directory is refused unread (/dev/zero never ends); a file too large is refused whole
    (cutting it would drop recipients without a word)."""
    try:
        fd = os.open(value, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
                kind = "a directory" if stat.S_ISDIR(mode) else "a device"
                raise ConfigError(f"{name}: {show(value, 200)} is {kind}, not a regular file. Fix: point it at a "
                                  "file of age recipients, one per line.")
            os.set_blocking(fd, True)  # opened: a pipe's reads now wait for its writer, or end when it has none
            data = os.read(fd, MAX_RECIPIENTS_FILE_BYTES + 1)
            while len(data) <= MAX_RECIPIENTS_FILE_BYTES and (more := os.read(fd, 1 << 16)):
                data += more
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {show(value, 200)} ({exc.strerror or type(exc).__name__}). "
                          "Fix: point it at a readable file of age recipients, one per line.") from None
    if len(data) > MAX_RECIPIENTS_FILE_BYTES:
        raise ConfigError(f"{name}: {show(value, 200)} is larger than {MAX_RECIPIENTS_FILE_BYTES // 1024} KiB, "
                          "far more than a list of public keys. Fix: point it at a file of age recipients, one per "
                          "line.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: {show(value, 200)} is not UTF-8 text. Fix: give a file of age recipients "
                          "(age1… or ssh-ed25519/ssh-rsa public keys), one per line.") from None
    return f"{name} {value}", text


def _retention(unit: str) -> Number:
    return Number(0, MAX_RETENTION[unit])


# --------------------------------------------------------------------------------------------------
# The table, in the reference's order

#: Group key -> the heading of its table in docs/configuration.md.
#: PGBKP_EMF: ``auto`` prints EMF metrics on stdout inside an ECS task (ECS_CONTAINER_METADATA_URI_V4 set).
EMF_MODES = ("auto", "stdout", "off")

GROUPS = {
    "backup": "What to back up",
    "s3": "Where to store it",
    "archive": "The archive",
    "retention": "Retention",
    "logs": "Time zone and logs",
    "runner": "The local runner (`pgbkp serve`; `pgbkp backup` reads `LOG_FILE`, `HEALTHCHECK_URL` and "
              "`METRICS_TEXTFILE` too)",
    "notify": "Notifications ([README](../README.md#notifications))",
    "lambda": "The Lambda function and its Fargate task",
}

_BOOL = "`true`/`false` (also `1/0`, `yes/no`, `on/off`)"
_STORAGE_CLASSES = ("on AWS (no `S3_ENDPOINT`) one of `STANDARD STANDARD_IA ONEZONE_IA INTELLIGENT_TIERING GLACIER_IR "
                    "GLACIER DEEP_ARCHIVE REDUCED_REDUNDANCY EXPRESS_ONEZONE`; with an endpoint, the store's own name "
                    "(`A-Z 0-9 _`); any case. `GLACIER` and `DEEP_ARCHIVE` warn: such backups must be restored from "
                    "the archive tier before `pgbkp restore` can read them")

VARIABLES: tuple[Variable, ...] = (
    Variable("PG_URLS", "backup", "the PostgreSQL connections ([below](#pg_urls))",
             "one or more items, comma-separated", "required", exact=True),
    Variable("IGNORE_DATABASES", "backup", "databases to skip on every connection", "comma-separated names",
             "none (templates and databases that refuse connections are always skipped)", _names),
    Variable("BACKUP_GLOBALS", "backup",
             "also back up each connection's roles and other globals (`pg_dumpall --globals-only`), after its "
             "databases, into its own object ([restore.md](restore.md#roles-and-other-globals)); `globals=` in a "
             "`PG_URLS` item overrides it", _BOOL, "`false`", parse_bool, "false"),
    Variable("GLOBAL_PREFIX", "backup", "folder prepended to every key",
             "printable text; leading, trailing and doubled `/` are dropped; `.` and `..` folders are refused",
             "none", _global_prefix),
    Variable("PG_BIN_DIR", "backup", "folder with the `pg_dump` and `psql` to use (it must hold both)", "a path",
             "`PATH`, then the newest `/usr/lib/postgresql/*/bin`", _bin_dir),
    Variable("PG_LOCK_WAIT_TIMEOUT_SECONDS", "backup",
             "how long `pg_dump` waits for its table locks (`--lock-wait-timeout`); past it the backup fails "
             "naming the locked table", "0–86400; `0` waits forever", "`300`", Number(0, 86_400), "300",
             read_by="pipeline"),
    Variable("PG_DUMP_ARGS", "backup",
             "more `pg_dump` flags, for the ones pg-bkp does not model ([below](#pg_dump_args)); an item's "
             "`pg_dump_args=` replaces it", "flags split as a shell would (no shell runs), each on the "
             "allow-list: `--no-owner --no-privileges --quote-all-identifiers`…", "none", parse_dump_args),
    Variable("DATABASE_CONCURRENCY", "backup",
             "databases of a connection backed up at once, each with its own upload, integrity and retention "
             "([architecture.md](architecture.md#several-databases-at-once)); memory grows with it",
             "1–32", "the CPUs this process may use, at most 2, and 1 per 256 MB of memory (measured in "
             "[benchmarks.md](benchmarks.md#several-databases-at-once))", Number(1, 32),
             read_by="pipeline"),

    Variable("S3_BUCKET", "s3", "bucket for every connection and database that does not name its own",
             "a bucket name (3–63 of `a-z 0-9 . -`)", "none", check_bucket),
    Variable("S3_ENDPOINT", "s3", "S3-compatible endpoint (MinIO, Ceph, B2, R2, …)",
             "`http://host:port` or `https://host`; no user or password in it", "AWS", check_endpoint),
    Variable("S3_ACCESS_KEY", "s3", "S3 access key ID",
             "set with `S3_SECRET_KEY`, or neither: then the AWS role or default credential chain", "none",
             _access_key),
    Variable("S3_SECRET_KEY", "s3", "S3 secret access key", "set with `S3_ACCESS_KEY`, or neither", "none", _secret),
    Variable("S3_REGION", "s3", "region", "letters, digits, `-`, `_`, `.`",
             "AWS: the SDK's; with an endpoint: `us-east-1`", check_region),
    Variable("S3_FORCE_PATH_STYLE", "s3", "path-style addressing (`http://host/bucket/key`), which MinIO needs",
             _BOOL, "`false`", parse_bool, "false"),
    Variable("S3_CHECKSUM", "s3",
             "the flexible-checksum headers (`x-amz-checksum-*`) boto3 ≥ 1.36 sends, which many S3-compatible "
             "stores reject",
             "`auto`: send them to AWS only (no `S3_ENDPOINT`); `when_required`: only where an API demands one; "
             "`off`: strip them, use `Content-MD5` instead", "`auto`", Choice(CHECKSUM_MODES), "auto"),
    Variable("S3_MAX_ATTEMPTS", "s3", "attempts per S3 request (standard retry mode)", "1–20", "`5`",
             Number(1, 20), "5"),
    Variable("S3_PART_SIZE_MB", "s3",
             "multipart part size; parts grow by one step every 1000 parts, so 8 MB reaches about 440 GB", "5–512",
             f"`{DEFAULT_PART_SIZE_MB}`", Number(5, 512), str(DEFAULT_PART_SIZE_MB)),
    Variable("S3_UPLOAD_CONCURRENCY", "s3", "parts uploaded at once; memory is about (concurrency + 1) × part size",
             "1–32", f"`{DEFAULT_UPLOAD_CONCURRENCY}`", Number(1, 32), str(DEFAULT_UPLOAD_CONCURRENCY)),
    Variable("S3_STORAGE_CLASS", "s3", "storage class of new backups", _STORAGE_CLASSES, "the store's default",
             check_storage_class),
    Variable("S3_SSE", "s3", "server-side encryption of new backups", "`AES256` or `aws:kms`, any case",
             "the bucket's default encryption", check_sse),
    Variable("S3_SSE_KMS_KEY_ID", "s3", "the KMS key for `S3_SSE=aws:kms` (an error with any other `S3_SSE`)",
             "a key ARN, key id, `alias/NAME` or alias ARN", "the account's `aws/s3` key", check_kms_key_id),
    Variable("S3_OBJECT_LOCK_MODE", "s3",
             "S3 Object Lock: each backup is written locked until retention may delete it "
             "([storage.md](storage.md#object-lock-storage-class-and-encryption)); the bucket must have been "
             "created with Object Lock",
             "`GOVERNANCE`, `COMPLIANCE` (any case), `off`; needs retention on (some `RETENTION_*` above 0), or it "
             "is an error", "off", check_lock_mode),

    Variable("ZIP_PASSWORD", "archive", "AES-256 (WinZip AE-1) password for the ZIP",
             "any text, kept exactly (spaces too); under 12 characters draws a warning", "unset: a plain ZIP",
             _secret, exact=True),
    Variable("ZIP_COMPRESSION_LEVEL", "archive", "deflate level", "0–9",
             f"`{DEFAULT_COMPRESSION_LEVEL}` (measured in [archive.md](archive.md))", Number(0, 9),
             str(DEFAULT_COMPRESSION_LEVEL)),
    Variable("COMPRESSION_THREADS", "archive", "deflate threads", "1–64", "the CPUs this process may use",
             Number(1, 64)),
    Variable("AGE_RECIPIENTS", "archive",
             "encrypt each backup to these age public keys: the object is the ZIP as one age file, "
             "`….zip.age` ([age.md](age.md)); the machine making backups then holds no key that reads them",
             "`age1…` or `ssh-ed25519 …`/`ssh-rsa …` public keys, comma- or newline-separated, `#` comments; "
             "each is checked at start-up. Not with `ZIP_PASSWORD` (an error for backups)", "unset: no age"),
    Variable("AGE_RECIPIENTS_FILE", "archive", "more recipients, from a file (added to `AGE_RECIPIENTS`)",
             "a path to a recipients file as `age -R` reads it: one per line, `#` comments", "none",
             _recipients_file),
    Variable("AGE_IDENTITY_FILE", "archive",
             "`restore` and `verify`: the identity that opens `.zip.age` backups (never needed where backups "
             "are made)", "a path to an `age-keygen` key file, an unencrypted `ssh-ed25519`/`ssh-rsa` private "
             "key, or either encrypted with `age -p`", "none", read_by="restore"),
    Variable("AGE_IDENTITY_PASSPHRASE", "archive",
             "the passphrase of an `AGE_IDENTITY_FILE` encrypted with `age -p` (from the environment, never argv)",
             "any text, kept exactly", "none", read_by="restore", exact=True),

    Variable("RETENTION_DAYS", "retention",
             "keep today and the N−1 calendar days before ([retention.md](retention.md))", "0–36500; `0` is off",
             "`0`", _retention("days"), "0"),
    Variable("RETENTION_WEEKS", "retention", "also keep the newest backup of each of the last N ISO weeks", "0–5200",
             "`0`", _retention("weeks"), "0"),
    Variable("RETENTION_MONTHS", "retention", "also keep the newest backup of each of the last N months", "0–1200",
             "`0`", _retention("months"), "0"),
    Variable("RETENTION_KEEP_LAST", "retention",
             "keep the N newest backups whatever their age (restic's `--keep-last`), a floor under the rules "
             "above; it deletes nothing by itself: with the three above at 0, retention is off",
             f"1–{MAX_KEEP_LAST}; `1` never deletes the newest", "`1`", Number(1, MAX_KEEP_LAST), "1"),

    Variable("TIMEZONE", "logs", "time zone of the names' timestamps, of retention's calendar days and of the schedule",
             "an IANA name (`UTC`, `Europe/Lisbon`)", f"`{DEFAULT_TIMEZONE}`", _timezone, DEFAULT_TIMEZONE),
    Variable("LOG_LEVEL", "logs", "log level", "`DEBUG`, `INFO`, `WARNING` (or `WARN`), `ERROR`, `CRITICAL`, any case",
             "`INFO`", _log_level, "INFO"),
    Variable("LOG_FORMAT", "logs", "log line format", "`text` or `json`", "text on a terminal, JSON elsewhere",
             _log_format),

    Variable("CRON_SCHEDULE", "runner", "when `pgbkp serve` backs up, after the backup at start, in `TIMEZONE`",
             "a 5-field cron expression, or `@hourly`, `@daily`, `@midnight`, `@weekly`, `@monthly`, `@yearly` "
             "(`@annually`) ([local-runner.md](local-runner.md#schedule))", "`0 3 * * *`", read_by="runner"),
    Variable("CRON_ENABLED", "runner", "`false`: `pgbkp serve` backs up once at start and exits with its code",
             _BOOL, "`true`", parse_bool, "true", read_by="runner"),
    Variable("SHUTDOWN_GRACE_SECONDS", "runner",
             "on SIGTERM, how long the database in flight may take to finish before its upload is aborted",
             "0–3600", "`30`", Number(0, 3600), "30", read_by="runner"),
    Variable("LOG_FILE", "runner", "a rotating log file (10 MB × 5) besides the console",
             "a path; `off` (or `none`, `-`, `false`, empty): no file",
             "`/var/log/pg-backup.log` when that folder is writable, else none", read_by="cli, runner"),
    Variable("HEALTH_FILE", "runner", "the status file `pgbkp serve` writes and `pgbkp health` reads",
             "a path to a regular file, or to none yet", "`/tmp/pgbkp-health.json` (root), else "
             "`/tmp/pgbkp-health-UID.json`", read_by="runner"),
    Variable("HEALTHCHECK_URL", "runner",
             "a healthchecks.io-style URL pinged at `/start`, on success and at `/fail`, with the run's summary",
             "an `http(s)` URL", "none", read_by="cli, runner"),
    Variable("HTTP_ADDR", "runner",
             "where `pgbkp serve` serves `/metrics` (Prometheus), `/healthz` and `/` (a status page) "
             "([local-runner.md](local-runner.md#metrics-and-the-status-page))",
             "`true` (`127.0.0.1:9187`), `false`, or `HOST:PORT` (`[::1]:PORT` for IPv6; port `0`: any free "
             "port, logged)", "off", _http_addr, read_by="runner"),
    Variable("METRICS_TEXTFILE", "runner",
             "a Prometheus text file rewritten atomically after each run of `pgbkp serve` and `pgbkp backup`, "
             "for node_exporter's textfile collector", "a path ending in `.prom`, in an existing folder", "none",
             _textfile, read_by="cli, runner"),

    Variable("NOTIFY_URLS", "notify",
             "where each run's message goes: [apprise](https://github.com/caronc/apprise/wiki) URLs (`slack://`, "
             "`tgram://`, `mailtos://`, `discord://`, `msteams://`, `ntfy://`, `json://` and `form://` webhooks); "
             "a secret, never logged. A PG_URLS item's `notify=` replaces it for that connection",
             "one or more URLs separated by commas or spaces; each must be one apprise supports", "none",
             read_by="notify"),
    Variable("NOTIFY_ON", "notify", "which runs send a message",
             "`failure` (some database failed), `always`, `never`", "`failure`", Choice(NOTIFY_ON_CHOICES), "failure",
             read_by="notify"),
    Variable("NOTIFY_TIMEOUT_SECONDS", "notify",
             "how long a run waits for its messages to go out, all URLs together; a late or failed one is "
             "logged as a warning, and the run's result and exit code stay as they are", "1–300", "`10`",
             Number(1, 300), "10", read_by="notify"),

    Variable("PG_URLS_SECRET_ID", "lambda",
             "read `PG_URLS` from Secrets Manager or SSM instead ([deploy.md](deploy.md))",
             "a secret name or ARN; an SSM parameter `/path`, `ssm:name` or ARN", "none",
             read_by="settings_secrets"),
    Variable("ZIP_PASSWORD_SECRET_ID", "lambda", "read `ZIP_PASSWORD` from Secrets Manager or SSM instead",
             "as `PG_URLS_SECRET_ID`", "none", read_by="settings_secrets"),
    Variable("AGE_RECIPIENTS_SECRET_ID", "lambda", "read `AGE_RECIPIENTS` from Secrets Manager or SSM instead",
             "as `PG_URLS_SECRET_ID`", "none", read_by="settings_secrets"),
    Variable("AGE_IDENTITY_SECRET_ID", "lambda",
             "`verify` in Lambda only: read the identity (the content of an `AGE_IDENTITY_FILE`) from a separate "
             "secret; never give it to the backup function ([age.md](age.md#lambda))",
             "as `PG_URLS_SECRET_ID`", "none", read_by="settings_secrets"),
    Variable("AGE_IDENTITY", "lambda",
             "the identity's content instead of a file: what `AGE_IDENTITY_SECRET_ID` fills in, in Lambda",
             "as the content of `AGE_IDENTITY_FILE`; not with it", "none", read_by="restore", exact=True),
    Variable("NOTIFY_URLS_SECRET_ID", "lambda", "read `NOTIFY_URLS` from Secrets Manager or SSM instead",
             "as `PG_URLS_SECRET_ID`", "none", read_by="settings_secrets"),
    Variable("SECRETS_MAX_AGE_SECONDS", "lambda", "how long a fetched secret is cached", "0 or more", "`300`",
             Number(0), "300", read_by="settings_secrets"),
    Variable("TIME_SAFETY_MARGIN_SECONDS", "lambda",
             "time kept free before starting another database; else the rest goes to a new invocation", "0–900",
             "`120`", Number(0, 900), "120", read_by="handler_core, dispatch"),
    Variable("TIME_HARD_MARGIN_SECONDS", "lambda", "below this, the dump in flight is aborted cleanly and reported",
             "1–900", "`20`", Number(1, 900), "20", read_by="handler_core, dispatch"),
    Variable("TIME_ESTIMATE_MB_PER_SECOND", "lambda",
             "conservative dump rate, to estimate a database's time from its size", "1–900", "`10`", Number(1, 900),
             "10", read_by="handler_core, dispatch"),
    Variable("PGBKP_LOCAL_RUNNER", "lambda",
             "back up in this process even where `AWS_LAMBDA_FUNCTION_NAME` is set (the image under `docker run`)",
             "any non-empty value", "unset", read_by="handler_core"),
    # The template sets these from its Fargate* parameters; all empty: no Fargate (pgbkp.dispatch).
    Variable("FARGATE_CLUSTER", "lambda",
             "the ECS cluster where a database too big for one invocation is backed up "
             "([deploy.md](deploy.md#databases-too-big-for-one-invocation-ecs-fargate))",
             "a cluster name or ARN; with `FARGATE_TASK_DEFINITION` and `FARGATE_SUBNETS`", "none: Fargate off",
             read_by="dispatch"),
    Variable("FARGATE_TASK_DEFINITION", "lambda", "the Fargate task definition started for such a database",
             "`family[:revision]` or an ARN", "none", read_by="dispatch"),
    Variable("FARGATE_SUBNETS", "lambda", "the subnets the task runs in", "comma-separated `subnet-…` ids",
             "none", AwsIds("subnet"), read_by="dispatch"),
    Variable("FARGATE_SECURITY_GROUPS", "lambda", "the task's security groups",
             "comma-separated `sg-…` ids", "the VPC's default group", AwsIds("sg"), read_by="dispatch"),
    Variable("FARGATE_ASSIGN_PUBLIC_IP", "lambda", "give the task a public IP (public subnets without NAT)",
             _BOOL, "`false`", parse_bool, "false", read_by="dispatch"),
    Variable("FARGATE_CONTAINER", "lambda", "the task definition's container whose command is replaced",
             "a container name", "`pgbkp`", fallback="pgbkp", read_by="dispatch"),
    Variable("PGBKP_EMF", "lambda",
             "`pgbkp backup` prints the Lambda function's metrics (CloudWatch EMF) on stdout, one line per "
             "database", "`auto` (in an ECS task: `ECS_CONTAINER_METADATA_URI_V4` is set), `stdout`, `off`",
             "`auto`", Choice(EMF_MODES, "an EMF mode"), "auto", read_by="cli"),
)

BY_NAME: Mapping[str, Variable] = {v.name: v for v in VARIABLES}
