"""A PG_URLS item with the global settings applied: one :class:`Connection` each, named so no two share a folder.

The item's own fields override the globals; the combinations are checked here, where both are known
(an AWS storage class only without an endpoint, a KMS key only with aws:kms, a lock only with retention).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from pgbkp.config.dumpargs import parse_dump_args
from pgbkp.config.model import AgeRecipients, Connection, S3Settings
from pgbkp.config.pgurls import Item, parse_db_buckets, parse_url
from pgbkp.config.selection import EXCLUDE_FLAGS, exclude_args, parse_db_patterns, split_patterns
from pgbkp.config.values import (
    AWS_STORAGE_CLASSES,
    MAX_KEEP_LAST,
    MAX_RETENTION,
    ConfigError,
    archive_tier_warning,
    check_bucket,
    check_endpoint,
    check_kms_key_id,
    check_lock_mode,
    check_region,
    check_sse,
    check_storage_class,
    parse_bool,
    parse_int,
    plain,
    show,
    split_list,
)
from pgbkp.redact import Secret


def connection(item: Item, glob_s3: S3Settings, global_bucket: str | None, global_ignore: frozenset[str],
               retention: Mapping[str, int], lock_mode: str | None, warnings: list[str],
               global_globals: bool = False, dump_args: tuple[str, ...] = (),
               age: AgeRecipients | None = None) -> Connection:
    """The item over the global settings (``dump_args``: PG_DUMP_ARGS); appends what deserves a warning
    (an archive storage class) to ``warnings``. ``age``: the global AGE_RECIPIENTS, which the item's ``age=``
    replaces."""
    f = item.fields
    where = item.label or f"PG_URLS item {item.number}"
    pg = parse_url(item.url, where)

    def field_name(name: str) -> str:
        pos = item.positional.get(name)
        return f"{where}: field {name!r}" + (f" (positional field {pos})" if pos else "")

    prefix = f.get("prefix") or None
    if prefix is not None and ("/" in prefix or prefix in (".", "..") or not prefix.isprintable()):
        raise ConfigError(
            f"{where}: field 'prefix': {show(prefix)} may not contain '/' or control characters, nor be . or "
            "'..'. Fix: use a plain name; put folders in GLOBAL_PREFIX."
        )
    # A value given by position is never shown: a left-out field moves a key into its place.
    bucket = (check_bucket(f["bucket"], field_name("bucket"), positional="bucket" in item.positional)
              if "bucket" in f else global_bucket)
    s3 = glob_s3
    if "endpoint" in f:
        s3 = replace(s3, endpoint=check_endpoint(f["endpoint"], field_name("endpoint"),
                                                 positional="endpoint" in item.positional))
    if "region" in f:
        s3 = replace(s3, region=check_region(f["region"], f"{where}: field 'region'"))
    if "forcepath" in f:
        s3 = replace(s3, force_path_style=parse_bool(f["forcepath"], field_name("forcepath"),
                                                     positional="forcepath" in item.positional))
    if "access" in f or "secret" in f:
        access = Secret(f["access"], scrub=False) if f.get("access") else s3.access_key
        secret = Secret(f["secret"]) if f.get("secret") else s3.secret_key
        if not access or not secret:
            given, missing = ("access", "secret") if f.get("access") else ("secret", "access")
            raise ConfigError(
                f"{where}: field {given!r}: given without {missing!r}, and S3_{missing.upper()}_KEY is not set. "
                f"Fix: add {missing}=... to this item, or set both S3_ACCESS_KEY and S3_SECRET_KEY."
            )
        s3 = replace(s3, access_key=access, secret_key=secret)
    days, weeks, months = (
        parse_int(f[k], f"{where}: field {k!r}", maximum=MAX_RETENTION[k.split("_")[1]])
        if k in f else retention[k.split("_")[1]]
        for k in ("retention_days", "retention_weeks", "retention_months")
    )
    keep_last = (parse_int(f["retention_keep_last"], f"{where}: field 'retention_keep_last'", minimum=1,
                           maximum=MAX_KEEP_LAST) if "retention_keep_last" in f else retention["keep_last"])
    s3 = _storage_settings(s3, f, where, lock_mode, (days, weeks, months), warnings)
    db_buckets = parse_db_buckets(f["db_buckets"], where) if "db_buckets" in f else {}
    if bucket is None and not db_buckets:
        raise ConfigError(
            f"{where}: field 'bucket': no bucket for this connection. Fix: set S3_BUCKET, or add "
            "bucket=NAME (or db_buckets=db=NAME,...) to this PG_URLS item."
        )
    if "pg_dump_args" in f:  # replaces PG_DUMP_ARGS; empty: none for this connection
        dump_args = parse_dump_args(f["pg_dump_args"], f"{where}: field 'pg_dump_args'")
    db_dump_args: dict[str, tuple[str, ...]] = {}
    for name in EXCLUDE_FLAGS:
        if name in f:
            dump_args += exclude_args(name, split_patterns(f[name], f"{where}: field {name!r}"))
        if f"db_{name}" in f:
            for db, patterns in parse_db_patterns(f[f"db_{name}"], f"{where}: field 'db_{name}'").items():
                db_dump_args[db] = (*db_dump_args.get(db, ()), *exclude_args(name, patterns))
    return Connection(
        index=item.number - 1,
        name=prefix or pg.host,
        prefix=prefix,
        pg=pg,
        s3=s3,
        bucket=bucket,
        db_buckets=db_buckets,
        ignore=global_ignore | split_list(f.get("ignore", "")),
        retention_days=days,
        retention_weeks=weeks,
        retention_months=months,
        globals=parse_bool(f["globals"], f"{where}: field 'globals'") if "globals" in f else global_globals,
        retention_keep_last=keep_last,
        databases=split_patterns(f["databases"], f"{where}: field 'databases'") if "databases" in f else (),
        dump_args=dump_args,
        db_dump_args=db_dump_args,
        age=_age(f["age"], where) if "age" in f else age,
        notify=Secret(f["notify"]) if "notify" in f else None,
    )


#: ``age=off`` (or these) in an item: no age for this connection, whatever AGE_RECIPIENTS says.
AGE_OFF = ("off", "none", "false", "no")


def _age(value: str, where: str) -> AgeRecipients | None:
    """The item's ``age=``: its own recipients (comma-separated; checked with pyrage at a backup's start),
    or ``off``."""
    if value.lower() in AGE_OFF:
        return None
    if not value:
        raise ConfigError(f"{where}: field 'age' is empty. Fix: give age1… or ssh-ed25519 public keys "
                          "(comma-separated), or age=off for no age on this connection.")
    return AgeRecipients(((f"{where}: field 'age'", value),))


def _storage_settings(s3: S3Settings, f: Mapping[str, str], where: str, lock_mode: str | None,
                      policy: tuple[int, int, int], warnings: list[str]) -> S3Settings:
    """The item's storage class, encryption and Object Lock over the global ones, checked together:
    a KMS key only with aws:kms, a lock only with a retention policy to compute its date from."""
    if "storage_class" in f:
        what = f"{where}: field 'storage_class'"
        s3 = replace(s3, storage_class=check_storage_class(f["storage_class"], what))
        warning = archive_tier_warning(s3.storage_class, what)
        if warning:
            warnings.append(warning)
    _check_aws_storage_class(s3, f"{where}: field 'storage_class'" if "storage_class" in f else
                             f"S3_STORAGE_CLASS (for {where}, which has no endpoint)")
    if "sse" in f:
        sse = check_sse(f["sse"], f"{where}: field 'sse'")
        # The global key belongs to the global aws:kms; another mode here drops it.
        s3 = replace(s3, sse=sse, sse_kms_key_id=s3.sse_kms_key_id if sse == "aws:kms" else None)
    if "sse_kms_key_id" in f:
        key = check_kms_key_id(f["sse_kms_key_id"], f"{where}: field 'sse_kms_key_id'")
        if s3.sse != "aws:kms":
            raise ConfigError(f"{where}: field 'sse_kms_key_id': {show(key, 200)} is set, but this item's "
                              f"encryption is {show(s3.sse) if s3.sse else 'unset'}, and a KMS key applies only to "
                              "aws:kms. Fix: add sse=aws:kms to this item (or set S3_SSE=aws:kms), or remove "
                              "sse_kms_key_id.")
        s3 = replace(s3, sse_kms_key_id=key)
    if "object_lock_mode" in f:
        lock_mode = check_lock_mode(f["object_lock_mode"], f"{where}: field 'object_lock_mode'")
    if lock_mode is None:
        return replace(s3, object_lock_mode=None)
    if not any(policy):
        what = (f"{where}: field 'object_lock_mode': {lock_mode}" if "object_lock_mode" in f
                else f"S3_OBJECT_LOCK_MODE: {lock_mode} (for {where})")
        raise ConfigError(f"{what} locks each backup for as long as retention keeps it, but retention is off "
                          "(RETENTION_DAYS, RETENTION_WEEKS and RETENTION_MONTHS are all 0), so there is no date to "
                          "lock until. Fix: set RETENTION_DAYS (or retention_days= in this item), or set "
                          "object_lock_mode=off in this item, or unset S3_OBJECT_LOCK_MODE.")
    return replace(s3, object_lock_mode=lock_mode)


def _check_aws_storage_class(s3: S3Settings, what: str) -> None:
    """On AWS (no endpoint) only AWS's own classes; another store may name its own."""
    if s3.endpoint is None and s3.storage_class is not None and s3.storage_class not in AWS_STORAGE_CLASSES:
        raise ConfigError(f"{what}: {show(s3.storage_class)} is not an AWS S3 storage class. Fix: use one of "
                          f"{', '.join(AWS_STORAGE_CLASSES)}, or leave it unset for STANDARD.")


def name_connections(connections: list[Connection]) -> list[Connection]:
    """Name each connection by prefix, else host; use host:port when two hosts would clash."""
    hosts = [c.pg.host for c in connections if c.prefix is None]
    named = [
        replace(c, name=f"{c.pg.host}:{c.pg.port}") if c.prefix is None and hosts.count(c.pg.host) > 1 else c
        for c in connections
    ]
    seen: dict[str, int] = {}
    for c in named:
        if c.name in seen:
            raise ConfigError(
                f"PG_URLS item {c.index + 1} ({plain(c.name)}): field 'prefix': the name {show(c.name)} is already "
                f"used by item {seen[c.name] + 1}, and both would write to the same folder. "
                "Fix: give one of them a distinct prefix (prefix|...|postgres://...)."
            )
        seen[c.name] = c.index
    return named
