"""Configuration: the original pg-bkp's environment variables, parsed and checked before any work starts.

Everything a run needs is read here, once, into frozen dataclasses. A bad value raises
:class:`ConfigError` with one message that names the variable or the PG_URLS item (position and name),
the field and the fix, and never the password. docs/configuration.md is the reference. Callers import
from here; the modules are, lowest first:

- ``values``: ConfigError and the parsers and checks of single values (a bucket, an endpoint, a number);
- ``model``: the dataclasses a loaded configuration is made of (Config, Connection, PgTarget, S3Settings);
- ``selection``: ``databases=`` names and patterns, and the exclude fields (pg_dump's ``--exclude-*`` flags);
- ``dumpargs``: PG_DUMP_ARGS, split and checked against its allow-list;
- ``pgurls``: the PG_URLS grammar (items, metadata fields, postgres:// URLs);
- ``variables``: the table of every environment variable (parser, default, reference row), and ``setting``;
- ``typos``: warnings for names that look like ours but are not, and other tools' names;
- ``connections``: an item with the global settings applied;
- ``loader``: ``load()``, which walks the table;
- ``docs``: ``python -m pgbkp.config.docs`` writes the reference's tables from the table (not imported here).
"""

from __future__ import annotations

from pgbkp.config.loader import MIN_ZIP_PASSWORD, load
from pgbkp.config.model import (
    DEFAULT_COMPRESSION_LEVEL,
    DEFAULT_PART_SIZE_MB,
    DEFAULT_TIMEZONE,
    DEFAULT_UPLOAD_CONCURRENCY,
    AgeRecipients,
    Config,
    Connection,
    PgTarget,
    S3Settings,
)
from pgbkp.config.pgurls import (
    KEY_ALIASES,
    POSITIONAL_FIELDS,
    SSL_MODES,
    parse_db_buckets,
    parse_url,
    split_item,
    split_items,
)
from pgbkp.config.selection import Selection, select
from pgbkp.config.typos import typo_warnings
from pgbkp.config.values import (
    ARCHIVE_STORAGE_CLASSES,
    AWS_STORAGE_CLASSES,
    CHECKSUM_MODES,
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_RETENTION,
    OBJECT_LOCK_MODES,
    SSE_MODES,
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
    split_list,
    unwrap_secret,
)
from pgbkp.config.variables import VARIABLES, Variable, setting

__all__ = [
    "ARCHIVE_STORAGE_CLASSES",
    "AWS_STORAGE_CLASSES",
    "CHECKSUM_MODES",
    "DEFAULT_COMPRESSION_LEVEL",
    "DEFAULT_PART_SIZE_MB",
    "DEFAULT_TIMEZONE",
    "DEFAULT_UPLOAD_CONCURRENCY",
    "KEY_ALIASES",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_RETENTION",
    "MIN_ZIP_PASSWORD",
    "OBJECT_LOCK_MODES",
    "POSITIONAL_FIELDS",
    "SSE_MODES",
    "SSL_MODES",
    "VARIABLES",
    "AgeRecipients",
    "Config",
    "ConfigError",
    "Connection",
    "PgTarget",
    "S3Settings",
    "Selection",
    "Variable",
    "check_bucket",
    "check_endpoint",
    "check_kms_key_id",
    "check_lock_mode",
    "check_region",
    "check_sse",
    "check_storage_class",
    "load",
    "parse_bool",
    "parse_db_buckets",
    "parse_int",
    "parse_url",
    "select",
    "setting",
    "split_item",
    "split_items",
    "split_list",
    "typo_warnings",
    "unwrap_secret",
]
