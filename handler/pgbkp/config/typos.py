"""Variables that look like ours but are not: a typo (``ZIP_PASSWROD``), or a setting of the tool being
replaced (postgres-backup-s3's ``PASSPHRASE``). pg-bkp would ignore them without a word, and a backup
would go out unencrypted, or kept forever; so each gets one warning that names the setting to use.

Only names are compared, never values (a value may be a secret). Other software's variables that resemble
ours (libpq's ``PGPASSWORD``, the AWS SDK's ``AWS_REGION``) are left alone: tests/test_config_typos.py
measures the check against the environments pg-bkp runs in.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pgbkp.config.variables import VARIABLES

#: Sorted, so that difflib and the messages see one order.
KNOWN = tuple(sorted(v.name for v in VARIABLES))


def _grams(name: str) -> set[str]:
    """The 4-letter runs of a name, underscores dropped (PGURLS and PG_URLS share URLS)."""
    letters = name.replace("_", "")
    return {letters[i:i + 4] for i in range(len(letters) - 3)}


#: A name outside our families that shares fewer than two 4-letter runs with ours (PATH, SSL_CERT_FILE) is
#: too far from all of them to reach OTHER_CUTOFF, and is not compared: difflib over every variable of a
#: shell would cost milliseconds at each load(). A typo keeps most runs (PGURLS shares 3 with PG_URLS).
_GRAMS = {name: _grams(name) for name in KNOWN}
_KNOWN_GRAMS = frozenset().union(*_GRAMS.values())

#: The prefixes of our names. A name with one is compared with a lower cutoff: it meant to be ours.
FAMILIES = ("PGBKP_", "BACKUP_", "PG_", "S3_", "ZIP_", "COMPRESSION_", "RETENTION_", "GLOBAL_", "IGNORE_", "TIMEZONE",
            "LOG_", "CRON_", "SHUTDOWN_", "HEALTH", "TIME_", "SECRETS_", "FARGATE_", "HTTP_ADDR", "METRICS_", "AGE_",
            "DATABASE_", "NOTIFY_")
#: Prefixes no other common software uses: a name there that is no setting is a mistake even when no
#: setting is close to it.
OWN_FAMILIES = ("PGBKP_", "S3_", "ZIP_", "RETENTION_", "CRON_")
#: difflib ratios (2 * matching characters / both lengths): ZIP_PASSWROD scores 0.92 against ZIP_PASSWORD.
FAMILY_CUTOFF = 0.7
OTHER_CUTOFF = 0.85

#: libpq's own variables (PostgreSQL 18, "Environment Variables"), and the server's PGDATA and the client
#: tools' PG_COLOR: PGPASSWORD scores 0.82 against ZIP_PASSWORD, a cutoff's width from a warning.
LIBPQ = frozenset({
    "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGPASSFILE", "PGREQUIREAUTH",
    "PGCHANNELBINDING", "PGSERVICE", "PGSERVICEFILE", "PGSYSCONFDIR", "PGOPTIONS", "PGAPPNAME", "PGSSLMODE",
    "PGREQUIRESSL", "PGSSLNEGOTIATION", "PGSSLCOMPRESSION", "PGSSLCERT", "PGSSLKEY", "PGSSLCERTMODE",
    "PGSSLROOTCERT", "PGSSLCRL", "PGSSLCRLDIR", "PGSSLSNI", "PGREQUIREPEER", "PGSSLMINPROTOCOLVERSION",
    "PGSSLMAXPROTOCOLVERSION", "PGMINPROTOCOLVERSION", "PGMAXPROTOCOLVERSION", "PGGSSENCMODE", "PGKRBSRVNAME",
    "PGGSSLIB", "PGGSSDELEGATION", "PGCONNECT_TIMEOUT", "PGCLIENTENCODING", "PGTARGETSESSIONATTRS",
    "PGLOADBALANCEHOSTS", "PGDATESTYLE", "PGTZ", "PGGEQO", "PGLOCALEDIR", "PGOAUTHDEBUG", "PGDATA", "PG_COLOR",
    "PG_COLORS",
})
#: Namespaces of the AWS SDK and Lambda runtime (AWS_ACCESS_KEY scores 0.89 against S3_ACCESS_KEY;
#: _HANDLER), Powertools and the locale: theirs, whatever they hold.
OTHER_PREFIXES = ("AWS_", "_", "LAMBDA_", "POWERTOOLS_", "LC_")
#: What Kubernetes (a Service "s3": S3_SERVICE_HOST, S3_PORT, S3_PORT_9000_TCP_ADDR) and Docker links
#: (POSTGRES_PORT) put in a container's environment. No setting of ours ends like this.
SERVICE_LINK = re.compile(r".*_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_\w+)?)?)")


@dataclass(frozen=True)
class Migration:
    """A variable of another tool (or a common name) and what pg-bkp reads instead."""

    name: str
    #: The tool it comes from; "" for a common name no tool in particular owns.
    source: str
    #: The pg-bkp settings to use instead; "" when none is needed or none exists.
    use: str
    #: What to know when moving over, one short clause.
    note: str


_S3 = "postgres-backup-s3"
_LOCAL = "postgres-backup-local"
_BOTH = f"{_S3} and {_LOCAL}"
_URL_FORM = "one postgres://USER:PASSWORD@HOST:PORT/DATABASE per server, the password percent-encoded"
_NO_FILES = "pg-bkp reads no _FILE variables; on Lambda, PG_URLS_SECRET_ID reads PG_URLS from a secret"

MIGRATIONS: tuple[Migration, ...] = (
    Migration("SCHEDULE", _BOTH, "CRON_SCHEDULE",
              "5 fields (no seconds) or @hourly, @daily, @weekly, @monthly (not @every)"),
    Migration("BACKUP_KEEP_DAYS", _BOTH, "RETENTION_DAYS", "it keeps today and the N-1 calendar days before"),
    Migration("BACKUP_KEEP_WEEKS", _LOCAL, "RETENTION_WEEKS", "the newest backup of each of the last N ISO weeks"),
    Migration("BACKUP_KEEP_MONTHS", _LOCAL, "RETENTION_MONTHS", "the newest backup of each of the last N months"),
    Migration("PASSPHRASE", _S3, "ZIP_PASSWORD", "backups become AES-256 ZIP files instead of GPG files"),
    Migration("S3_PREFIX", _S3, "GLOBAL_PREFIX", "or prefix= in a PG_URLS item"),
    Migration("S3_PATH", _S3, "GLOBAL_PREFIX", "or prefix= in a PG_URLS item"),
    Migration("S3_ACCESS_KEY_ID", _S3, "S3_ACCESS_KEY", "set with S3_SECRET_KEY"),
    Migration("S3_SECRET_ACCESS_KEY", _S3, "S3_SECRET_KEY", "set with S3_ACCESS_KEY"),
    Migration("S3_S3V4", _S3, "", "not needed: pg-bkp always signs S3 requests with Signature Version 4"),
    Migration("POSTGRES_HOST", _BOTH, "PG_URLS", _URL_FORM),
    Migration("POSTGRES_USER", _BOTH, "PG_URLS", _URL_FORM),
    Migration("POSTGRES_PASSWORD", _BOTH, "PG_URLS", _URL_FORM),
    Migration("POSTGRES_DATABASE", _S3, "PG_URLS",
              "pg-bkp backs up every database of each server; databases= in a PG_URLS item picks some"),
    Migration("POSTGRES_DB", _LOCAL, "PG_URLS", "pg-bkp backs up every database of each server; databases= in a "
              "PG_URLS item picks some"),
    Migration("POSTGRES_USER_FILE", _LOCAL, "PG_URLS", _NO_FILES),
    Migration("POSTGRES_PASSWORD_FILE", _LOCAL, "PG_URLS", _NO_FILES),
    Migration("PGDUMP_EXTRA_OPTS", _S3, "PG_DUMP_ARGS", "the flags on its allow-list only (no -F, -f, -j or "
              "connection flags: pg-bkp streams plain SQL); exclude_table= and the like in PG_URLS for -T, -N"),
    Migration("POSTGRES_EXTRA_OPTS", _BOTH, "PG_DUMP_ARGS", "the flags on its allow-list only (no -F, -f, -j or "
              "connection flags: pg-bkp streams plain SQL); exclude_table= and the like in PG_URLS for -T, -N"),
    Migration("HEALTHCHECK_PORT", _LOCAL, "", "no equivalent: pg-bkp serves no HTTP; pgbkp health reads HEALTH_FILE, "
              "and HEALTHCHECK_URL pings a monitor"),
    Migration("DISCORD_WEBHOOK_URL", _S3, "NOTIFY_URLS", "as discord://WEBHOOK_ID/WEBHOOK_TOKEN (apprise's form of "
              "the webhook URL); NOTIFY_ON=always to hear of successes too"),
    Migration("DATABASE_URL", "", "PG_URLS", "several servers separated by commas"),
    Migration("PG_HOST", "", "PG_URLS", _URL_FORM),
    Migration("PG_USER", "", "PG_URLS", _URL_FORM),
    Migration("PG_PASSWORD", "", "PG_URLS", _URL_FORM),
    Migration("PG_DATABASE", "", "PG_URLS", "pg-bkp backs up every database of each server; databases= in a "
              "PG_URLS item picks some"),
)
_BY_NAME = {m.name: m for m in MIGRATIONS}


def typo_warnings(env: Mapping[str, str]) -> list[str]:
    """One warning for each variable in ``env`` that looks like a pg-bkp setting but is none, in name order."""
    out: list[str] = []
    for name in sorted(env):
        if name in KNOWN:
            continue
        line = _migration(name) or _typo(name)
        if line:
            out.append(line)
    return out


def _migration(name: str) -> str | None:
    m = _BY_NAME.get(name)
    if m is None:
        return None
    whose = f"a {m.source} setting, not pg-bkp's," if m.source else "not a pg-bkp setting"
    if m.use:
        return f"{name} is {whose} and is ignored. Use {m.use} instead: {m.note}."
    return f"{name} is {whose} and is ignored: {m.note}."


def _typo(name: str) -> str | None:
    upper = name.upper()
    ignored = f"{name} is not a pg-bkp setting and is ignored"
    if upper in KNOWN:
        return f"{ignored} (names are case-sensitive). Did you mean {upper}?"
    if upper in LIBPQ or upper.startswith(OTHER_PREFIXES) or SERVICE_LINK.fullmatch(upper):
        return None
    family = next((f for f in FAMILIES if upper.startswith(f)), None)
    candidates: Sequence[str] = KNOWN
    if family is None:
        grams = _grams(upper)
        if len(_KNOWN_GRAMS.intersection(grams)) < 2:
            return None
        candidates = [n for n in KNOWN if len(_GRAMS[n] & grams) >= 2]
    close = difflib.get_close_matches(upper, candidates, n=1, cutoff=FAMILY_CUTOFF if family else OTHER_CUTOFF)
    if close:
        return f"{ignored}. Did you mean {close[0]}?"
    if family in OWN_FAMILIES:
        ours = [n for n in KNOWN if n.startswith(family)]
        listed = ", ".join(ours) if len(ours) <= 4 else "listed in docs/configuration.md"
        return f"{ignored}. The {family} settings are {listed}."
    return None
