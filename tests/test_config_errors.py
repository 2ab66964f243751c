"""Malformed configurations: each gives one ConfigError that names where (item position and name, or the
variable), the field, and the fix, on one line, and never any piece of the password.

Every case carries the same distinctive PostgreSQL password, percent-encoded in its URL (or raw, where the
mistake is a raw character), and the message must contain neither the password, nor its encoded forms,
nor any 4-character piece of it.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field

import pytest

from pgbkp.config import ConfigError, load

#: Distinctive: none of its 4-character pieces occurs in an ordinary message.
PASSWORD = "Kx7#Qv9@Zr%é/Wp&=?,J"
ENC = urllib.parse.quote(PASSWORD, safe="")
URL = f"postgres://app:{ENC}@db1.internal:5432/postgres"
URL2 = f"postgres://app:{ENC}@db2.internal:5432/postgres"
#: A raw password with a character that must be percent-encoded, for the raw-character mistakes.
RAW = "Kx7Qv{}Zr9WpJ"
S3_SECRET = "Vq3Ts9Lm2Np8Hb6"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
B64_SECRET = "Zm9vYmFyYmF6cXV4="


pytestmark = pytest.mark.usefixtures("forget_test_secrets")


@dataclass(frozen=True)
class Case:
    id: str
    pg_urls: str
    expect: tuple[str, ...]
    env: dict[str, str | None] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()

    def environ(self) -> dict[str, str]:
        env: dict[str, str | None] = {"S3_BUCKET": "global-bucket", **self.env, "PG_URLS": self.pg_urls}
        return {k: v for k, v in env.items() if v is not None}


def item(n: int, name: str | None = None, fld: str | None = None) -> tuple[str, ...]:
    where = f"PG_URLS item {n}" + (f" ({name})" if name else "")
    return (where, f"field '{fld}'") if fld else (where,)


CASES = [
    # PG_URLS as a whole
    Case("PG_URLS empty", "", ("PG_URLS: not set",)),
    Case("PG_URLS blank", "  \n ", ("PG_URLS: not set",)),
    Case("empty item (,,)", f"{URL},,{URL2}", ("PG_URLS item 2 is empty",)),
    Case("leading comma", f",{URL}", ("PG_URLS item 1 is empty",)),
    Case("no URL", "pfx|bucket=b-1", (*item(1), "field 'url'", "no postgres://")),
    Case("second item without URL", f"{URL},pfx|bucket=b-1", (*item(2), "field 'url'", "item 1")),
    Case("wrong scheme", f"mysql://app:{ENC}@db1.internal/x", (*item(1), "field 'url'", "'mysql'")),
    Case("SQLAlchemy scheme", f"postgresql+psycopg://app:{ENC}@db1.internal/x",
         (*item(1), "field 'url'", "'postgresql+psycopg'")),
    Case("scheme inside a word", f"pfx|mypostgres://app:{ENC}@db1.internal/x", (*item(1), "field 'url'")),
    Case("no host", f"postgres://app:{ENC}@/postgres", (*item(1), "field 'url'", "no host")),
    Case("no host, only port", f"pfx|postgres://app:{ENC}@:5432/postgres", (*item(1, "pfx", "url"), "no host")),
    Case("no user", f"postgres://:{ENC}@db1.internal/postgres", (*item(1), "field 'url'", "no user")),
    Case("bad port", f"postgres://app:{ENC}@db1.internal:54x2/postgres", (*item(1, "db1.internal", "url"), "port")),
    Case("port out of range", f"postgres://app:{ENC}@db1.internal:70000/x", (*item(1, "db1.internal", "url"), "port")),
    Case("port zero", f"postgres://app:{ENC}@db1.internal:0/x", (*item(1, "db1.internal", "url"), "port")),
    Case("@host missing", f"postgres://app:{RAW.format('x')}/postgres", (*item(1), "field 'url'", "port")),
    Case("bad IPv6", f"postgres://app:{ENC}@[::1/x", (*item(1), "field 'url'", "IPv6")),
    Case("fragment", f"{URL}#x", (*item(1, "db1.internal", "url"), "%23")),
    # metadata
    Case("unknown key", f"pfx|colour=blue|{URL}", (*item(1, "pfx"), "field 2", "an unknown key (not shown")),
    Case("misspelt key", f"pfx|bukcet=b-1|{URL}", (*item(1, "pfx"), "field 2", "'bukcet' (did you mean 'bucket'?)")),
    Case("unknown key in the secret slot", f"pfx|b-1|http://e:9000|true|AK|{S3_SECRET}=x|{URL}",
         (*item(1, "pfx"), "field 6", "unknown key"), secrets=(S3_SECRET,)),
    Case("empty key", f"pfx|=blue|{URL}", (*item(1, "pfx"), "field 2", "empty key")),
    Case("too many positional fields", f"p|b-1|http://e:9000|true|AK|SK|extra|{URL}",
         (*item(1, "p"), "field 7", "too many positional")),
    Case("field given twice", f"pfx|prefix=other|{URL}", (*item(1, "pfx"), "'prefix' is given twice")),
    Case("alias given twice", f"forcepath=true|force_path_style=false|{URL}",
         (*item(1, "db1.internal"), "'forcepath' is given twice")),
    Case("metadata not ending in |", f"pfx {URL}", (*item(1), "does not end with | or @")),
    Case("bad bucket", f"pfx|bucket=Bad_Bucket|{URL}", (*item(1, "pfx", "bucket"), "'Bad_Bucket'")),
    Case("bad positional bucket", f"pfx|Bad_Bucket|{URL}",
         (*item(1, "pfx", "bucket"), "(positional field 2)", "value not shown"), secrets=("Bad_Bucket",)),
    Case("bucket too short", f"pfx|bucket=ab|{URL}", item(1, "pfx", "bucket")),
    Case("bad db_buckets pair", f"pfx|db_buckets=sales|{URL}", (*item(1, "pfx", "db_buckets"), "db=bucket")),
    Case("bad db_buckets pair (@ form)", f"conn1@db_buckets=prod=prod-backups,other@{URL}",
         (*item(1, "conn1", "db_buckets"), "'other'")),
    Case("bad db_buckets bucket", f"pfx|db_buckets=sales=Sales_Bkt|{URL}",
         (*item(1, "pfx", "db_buckets"), "'sales'", "'Sales_Bkt'")),
    Case("db_buckets database twice", f"pfx|db_buckets=a=b-1,a=b-2|{URL}", (*item(1, "pfx", "db_buckets"), "twice")),
    Case("empty db_buckets", f"pfx|db_buckets=|{URL}", (*item(1, "pfx", "db_buckets"), "empty")),
    Case("bad forcepath", f"pfx|forcepath=maybe|{URL}", (*item(1, "pfx", "forcepath"), "'maybe'")),
    Case("bad positional forcepath", f"pfx|b-1|http://e:9000|maybe|{URL}",
         (*item(1, "pfx", "forcepath"), "(positional field 4)", "value not shown"), secrets=("maybe",)),
    Case("secret key in the forcepath slot", f"prod|bkt-1|http://h:9000|{S3_SECRET}|access|{URL}",
         (*item(1, "prod", "forcepath"), "(positional field 4)", "prefix|bucket|endpoint|forcepath|access|secret"),
         secrets=(S3_SECRET,)),
    Case("AWS secret key in the endpoint slot", f"prod|bkt-1|{AWS_SECRET}|true|{URL}",
         (*item(1, "prod", "endpoint"), "(positional field 3)"), secrets=(AWS_SECRET,)),
    Case("AWS secret key in the bucket slot", f"prod|{AWS_SECRET}|{URL}",
         (*item(1, "prod", "bucket"), "(positional field 2)"), secrets=(AWS_SECRET,)),
    Case("padded base64 secret in a positional slot", f"prod|bkt-1|http://h:9000|{B64_SECRET}|{URL}",
         (*item(1, "prod"), "field 4", "an unknown key (not shown"), secrets=(B64_SECRET, B64_SECRET[:-1])),
    Case("bad endpoint", f"pfx|endpoint=minio:9000|{URL}", (*item(1, "pfx", "endpoint"), "http://host:port")),
    Case("endpoint with credentials", f"pfx|endpoint=http://ak:{S3_SECRET}@minio:9000|{URL}",
         (*item(1, "pfx", "endpoint"), "user or password"), secrets=(S3_SECRET,)),
    Case("bad region", f"pfx|region=us east 1|{URL}", (*item(1, "pfx", "region"),)),
    Case("access without secret", f"pfx|access=AKIAX|{URL}", (*item(1, "pfx", "access"), "S3_SECRET_KEY")),
    Case("secret without access", f"pfx|secret={S3_SECRET}|{URL}", (*item(1, "pfx", "secret"),),
         secrets=(S3_SECRET,)),
    Case("non-numeric retention_days", f"pfx|retention_days=seven|{URL}",
         (*item(1, "pfx", "retention_days"), "whole number")),
    Case("negative retention_days", f"pfx|retention_days=-1|{URL}", (*item(1, "pfx", "retention_days"), "range")),
    Case("huge retention_months", f"pfx|retention_months=99999|{URL}",
         (*item(1, "pfx", "retention_months"), "range")),
    Case("prefix with /", f"a/b|{URL}", (*item(1, "a/b", "prefix"), "GLOBAL_PREFIX")),
    Case("prefix ..", f"prefix=..|{URL}", item(1, "..", "prefix")),
    # URL query
    Case("bad sslmode", f"{URL}?sslmode=required", (*item(1, "db1.internal", "url"), "sslmode")),
    Case("ssl=false", f"{URL}?ssl=false", (*item(1, "db1.internal", "url"), "ssl")),
    Case("?password= in query", f"postgres://app@db1.internal/postgres?password={ENC}",
         (*item(1, "db1.internal", "url"), "'password'")),
    Case("?sslpassword= in query", f"{URL}?sslpassword={ENC}", (*item(1, "db1.internal", "url"), "'sslpassword'")),
    Case("?user= in query", f"{URL}?user=other", (*item(1, "db1.internal", "url"), "'user'")),
    Case("bad query parameter name", f"{URL}?bad%20key=1", (*item(1, "db1.internal", "url"), "parameter")),
    Case("bad connect_timeout", f"{URL}?connect_timeout=soon", (*item(1, "db1.internal", "url"), "connect_timeout")),
    Case("query parameter twice", f"{URL}?sslmode=require&sslmode=disable",
         (*item(1, "db1.internal", "url"), "twice")),
    # raw characters that must be percent-encoded
    Case("raw comma in the last item's password", f"{URL2},postgres://app:{RAW.format(',')}@db1.internal/x",
         (*item(3), "field 'url'", "%2C")),
    Case("raw comma in a middle item's password", f"postgres://app:{RAW.format(',')}@db1.internal/x,{URL2}",
         (*item(2), "item 1", "%2C")),
    Case("raw / in password", f"postgres://app:{RAW.format('/')}@db1.internal/x", (*item(1), "field 'url'", "%2F")),
    Case("raw ? in password", f"postgres://app:{RAW.format('?')}@db1.internal/x", (*item(1), "field 'url'", "%3F")),
    Case("raw # in password", f"postgres://app:{RAW.format('#')}@db1.internal/x", (*item(1), "field 'url'", "%23")),
    Case("raw @ and / in password", "postgres://postgres:Top@Secret/Tail@db1.internal/x",
         (*item(1), "field 'url'", "more than one '@'", "encode @ as %40"), secrets=("Top", "Secret", "Tail")),
    Case("two raw @ in password", f"postgres://app:{RAW.format('@')}@db1.internal/x",
         (*item(1), "field 'url'", "encode @ as %40")),
    Case("raw @ in the database name", f"postgres://app:{ENC}@db1.internal/a@b", (*item(1), "encode @ as %40")),
    # NUL characters: PostgreSQL and the environment cannot hold them
    Case("%00 in password", f"postgres://app:{ENC}%00@db1.internal/x",
         (*item(1, "db1.internal", "url"), "the password contains %00")),
    Case("%00 in user", f"postgres://a%00pp:{ENC}@db1.internal/x", (*item(1, "db1.internal", "url"), "the user")),
    Case("%00 in database", f"postgres://app:{ENC}@db1.internal/x%00y",
         (*item(1, "db1.internal", "url"), "the database name contains %00")),
    Case("%00 in a query value", f"{URL}?application_name=a%00b",
         (*item(1, "db1.internal", "url"), "'application_name' contains %00")),
    Case("%00 in host", f"postgres://app:{ENC}@db%001/x", (*item(1, "db\\x001", "url"), "control characters")),
    Case("raw NUL in an item", f"pfx|ignore=a\x00b|{URL}", (*item(1), "NUL character")),
    # control characters are shown escaped, so that the message stays one line
    Case("newline in prefix", f"pre\nfix|{URL}", (*item(1, "pre\\nfix", "prefix"), "'pre\\nfix'")),
    Case("newline in host", f"postgres://app:{ENC}@db%0A1/x", (*item(1, "db\\n1", "url"), "control characters")),
    Case("right-to-left override in host", f"postgres://app:{ENC}@db%E2%80%AE1/x",
         (*item(1, "db\\u202e1", "url"), "control characters")),
    Case("escape sequence in prefix", f"a\x1b[2Jb|{URL}", item(1, "a\\x1b[2Jb", "prefix")),
    # naming and buckets
    Case("duplicate prefixes", f"p|{URL},p|{URL2}", (*item(2, "p", "prefix"), "item 1")),
    Case("duplicate host and port", f"{URL},{URL}", (*item(2, "db1.internal:5432", "prefix"), "item 1")),
    Case("prefix equals another's host", f"{URL},db1.internal|{URL2}", (*item(2, "db1.internal", "prefix"),)),
    Case("no bucket anywhere", URL, (*item(1, "db1.internal", "bucket"), "S3_BUCKET"), env={"S3_BUCKET": None}),
    # global variables
    Case("unknown TIMEZONE", URL, ("TIMEZONE:", "'Mars/Olympus'"), env={"TIMEZONE": "Mars/Olympus"}),
    Case("TIMEZONE is a folder", URL, ("TIMEZONE:", "'America'"), env={"TIMEZONE": "America"}),
    Case("TIMEZONE path", URL, ("TIMEZONE:",), env={"TIMEZONE": "../../etc/passwd"}),
    Case("bad RETENTION_DAYS", URL, ("RETENTION_DAYS:", "whole number"), env={"RETENTION_DAYS": "7d"}),
    Case("negative RETENTION_WEEKS", URL, ("RETENTION_WEEKS:", "range"), env={"RETENTION_WEEKS": "-2"}),
    Case("bad RETENTION_MONTHS", URL, ("RETENTION_MONTHS:",), env={"RETENTION_MONTHS": "1.5"}),
    Case("bad S3_FORCE_PATH_STYLE", URL, ("S3_FORCE_PATH_STYLE:", "'sometimes'"),
         env={"S3_FORCE_PATH_STYLE": "sometimes"}),
    Case("ZIP_COMPRESSION_LEVEL too high", URL, ("ZIP_COMPRESSION_LEVEL:", "0 to 9"),
         env={"ZIP_COMPRESSION_LEVEL": "10"}),
    Case("ZIP_COMPRESSION_LEVEL word", URL, ("ZIP_COMPRESSION_LEVEL:",), env={"ZIP_COMPRESSION_LEVEL": "fast"}),
    Case("bad COMPRESSION_THREADS", URL, ("COMPRESSION_THREADS:",), env={"COMPRESSION_THREADS": "0"}),
    Case("bad S3_CHECKSUM", URL, ("S3_CHECKSUM:", "when_required"), env={"S3_CHECKSUM": "crc32"}),
    Case("bad LOG_LEVEL", URL, ("LOG_LEVEL:", "'VERBOSE'"), env={"LOG_LEVEL": "verbose"}),
    Case("bad LOG_FORMAT", URL, ("LOG_FORMAT:", "'xml'"), env={"LOG_FORMAT": "xml"}),
    Case("bad S3_REGION", URL, ("S3_REGION:",), env={"S3_REGION": "us east 1"}),
    Case("S3_ACCESS_KEY without S3_SECRET_KEY", URL, ("S3_ACCESS_KEY:", "S3_SECRET_KEY"),
         env={"S3_ACCESS_KEY": "AKIAX"}),
    Case("S3_SECRET_KEY without S3_ACCESS_KEY", URL, ("S3_SECRET_KEY:", "S3_ACCESS_KEY"),
         env={"S3_SECRET_KEY": S3_SECRET}, secrets=(S3_SECRET,)),
    Case("bad S3_BUCKET", URL, ("S3_BUCKET:",), env={"S3_BUCKET": "My Bucket"}),
    Case("bad S3_ENDPOINT", URL, ("S3_ENDPOINT:",), env={"S3_ENDPOINT": "localhost:9000"}),
    Case("bad S3_MAX_ATTEMPTS", URL, ("S3_MAX_ATTEMPTS:",), env={"S3_MAX_ATTEMPTS": "0"}),
    Case("bad S3_PART_SIZE_MB", URL, ("S3_PART_SIZE_MB:", "5 to 512"), env={"S3_PART_SIZE_MB": "4"}),
    Case("bad S3_UPLOAD_CONCURRENCY", URL, ("S3_UPLOAD_CONCURRENCY:",), env={"S3_UPLOAD_CONCURRENCY": "many"}),
    Case("bad PG_BIN_DIR", URL, ("PG_BIN_DIR:", "pg_dump"), env={"PG_BIN_DIR": "/nonexistent/bin"}),
    # found in the adversarial pass: each gave a ValueError traceback (exit 1) or passed silently
    Case("5000-digit port", f"postgres://app:{ENC}@db1.internal:{'9' * 5000}/x",
         (*item(1, "db1.internal", "url"), "port")),
    Case("5000-digit retention_days", f"pfx|retention_days={'9' * 5000}|{URL}",
         (*item(1, "pfx", "retention_days"), "'99999999999999999999...' is out of range")),
    Case("5000-digit RETENTION_DAYS", URL, ("RETENTION_DAYS: '99999999999999999999...' is out of range",),
         env={"RETENTION_DAYS": "9" * 5000}),
    Case("5000-digit connect_timeout", f"{URL}?connect_timeout={'1' * 5000}",
         (*item(1, "db1.internal", "url"), "range")),
    Case("newline in S3_ENDPOINT", URL, ("S3_ENDPOINT: the URL contains control characters",),
         env={"S3_ENDPOINT": "http://minio\n:9000"}),
    Case("secret before ://", f"{S3_SECRET}://app@db1.internal/x", (*item(1), "no postgres://"), secrets=(S3_SECRET,)),
    Case("GLOBAL_PREFIX ..", URL, ("GLOBAL_PREFIX: '..' has a '.' or '..' folder",), env={"GLOBAL_PREFIX": ".."}),
    Case("GLOBAL_PREFIX .", URL, ("GLOBAL_PREFIX: '.' has",), env={"GLOBAL_PREFIX": "."}),
    Case("GLOBAL_PREFIX a/../..", URL, ("GLOBAL_PREFIX: 'a/../..' has",), env={"GLOBAL_PREFIX": "/a/../../"}),
    Case("GLOBAL_PREFIX newline", URL, ("GLOBAL_PREFIX: 'a\\nb' contains control",), env={"GLOBAL_PREFIX": "a\nb"}),
]


def forbidden(case: Case) -> list[str]:
    """The password and its encodings, every 4-character piece of it, and the case's other secrets."""
    raws = [PASSWORD, *(RAW.format(c) for c in ",/?#x")]
    out = {urllib.parse.quote(p, safe="") for p in raws} | {urllib.parse.quote_plus(p) for p in raws}
    for p in raws:
        out |= {p[i:i + 4] for i in range(len(p) - 3)}
    return sorted(out | set(case.secrets))


def test_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed(case: Case) -> None:
    with pytest.raises(ConfigError) as info:
        load(case.environ())
    message = str(info.value)
    for part in case.expect:
        assert part in message, f"{part!r} not in {message!r}"
    assert "Fix:" in message, message
    assert "\n" not in message, message
    leaked = [s for s in forbidden(case) if s in message]
    assert not leaked, f"{leaked} in {message!r}"


def test_first_mistake_wins_in_item_order() -> None:
    """Several bad items: the message is about the first one, by position."""
    with pytest.raises(ConfigError, match=r"^PG_URLS item 2 \(b\): field 'bucket'"):
        load({"PG_URLS": f"a|{URL},b|bucket=BAD|{URL2},c|bucket=ALSO_BAD|{URL}", "S3_BUCKET": "global-bucket"})


@pytest.mark.parametrize(("pg_urls", "message"), [
    (f"prod|bkt-1|http://h:9000|{S3_SECRET}|access|{URL}",
     "PG_URLS item 1 (prod): field 'forcepath' (positional field 4): not true or false (value not shown: it may "
     "be a key moved up by a left-out field). Fix: use true or false; positional fields are "
     "prefix|bucket|endpoint|forcepath|access|secret, so keep a left-out one's place empty (a||c) or write "
     "key=value."),
    (f"prod|bkt-1|{AWS_SECRET}|{URL}",
     "PG_URLS item 1 (prod): field 'endpoint' (positional field 3): not an http(s) URL with a host and a valid "
     "port (value not shown: it may be a key moved up by a left-out field). Fix: write it as http://host:port or "
     "https://host; positional fields are prefix|bucket|endpoint|forcepath|access|secret, so keep a left-out "
     "one's place empty (a||c) or write key=value."),
    ("postgres://postgres:Top@Secret/Tail@host/db",
     "PG_URLS item 1: field 'url': more than one '@', so one is inside the user, password or database name (URL "
     "not shown: any part of it may be the password). Fix: encode @ as %40 there, keeping only the @ before the "
     "host; likewise / %2F, ? %3F, # %23, , %2C, % %25."),
    ("postgres://u:pass%00word@h/db",
     "PG_URLS item 1 (h): field 'url': the password contains %00, a NUL character, which PostgreSQL cannot take "
     "(host h). Fix: remove the %00."),
    ("pre\nfix|postgres://u@h/db",
     "PG_URLS item 1 (pre\\nfix): field 'prefix': 'pre\\nfix' may not contain '/' or control characters, nor be "
     ". or '..'. Fix: use a plain name; put folders in GLOBAL_PREFIX."),
    ("postgres://u@ho%0Ast/db",
     "PG_URLS item 1 (ho\\nst): field 'url': the host contains spaces or control characters. Fix: write a host "
     "name or address."),
])
def test_issue_messages_exactly(pg_urls: str, message: str) -> None:
    """The cases reported in the issue, word for word: the slot and what was expected, never the value."""
    with pytest.raises(ConfigError) as info:
        load({"S3_BUCKET": "global-bucket", "PG_URLS": pg_urls})
    assert str(info.value) == message


def test_a_positional_value_that_is_valid_is_used() -> None:
    """Hiding failed positional values changes no accepted configuration."""
    c = load({"PG_URLS": f"prod|bkt-1|http://h:9000|true|AK|{S3_SECRET}|{URL}"}).connections[0]
    assert (c.bucket, c.s3.endpoint, c.s3.force_path_style) == ("bkt-1", "http://h:9000", True)
