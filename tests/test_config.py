"""PG_URLS and the global variables: every accepted form, parsed into what the rest of the code uses.

The malformed inputs live in test_config_errors.py; the real command's behaviour in test_cli_errors.py.
"""

from __future__ import annotations

import logging
import urllib.parse
import uuid
from pathlib import Path

import pytest

from pgbkp import config, postgres
from pgbkp.config import Config, ConfigError, load
from pgbkp.redact import redact
from tests.servers import HOSTILE_PASSWORD, PgCluster

URL = "postgres://user:pw@db.example.com:5432/postgres"


pytestmark = pytest.mark.usefixtures("forget_test_secrets")


def one(pg_urls: str, **env: str) -> config.Connection:
    cfg = load({"S3_BUCKET": "global-bucket", **env, "PG_URLS": pg_urls})
    assert len(cfg.connections) == 1
    return cfg.connections[0]


def conns(pg_urls: str, **env: str) -> tuple[config.Connection, ...]:
    return load({"S3_BUCKET": "global-bucket", **env, "PG_URLS": pg_urls}).connections


# --------------------------------------------------------------------------------------------------
# URL forms


def test_plain_url() -> None:
    c = one(URL)
    assert (c.index, c.name, c.prefix, c.base_dir) == (0, "db.example.com", None, "db.example.com")
    assert (c.pg.host, c.pg.port, c.pg.user, c.pg.database) == ("db.example.com", 5432, "user", "postgres")
    assert c.pg.password is not None and c.pg.password.reveal() == "pw"
    assert c.pg.params == ()
    assert c.bucket == "global-bucket" and c.bucket_for("anything") == "global-bucket"


def test_postgresql_scheme_and_defaults() -> None:
    c = one("postgresql://u@h")
    assert (c.pg.host, c.pg.port, c.pg.user, c.pg.database, c.pg.password) == ("h", 5432, "u", "postgres", None)
    assert one("POSTGRES://u@h:6543/x").pg.port == 6543


def test_host_is_lowercased_like_the_original_folder() -> None:
    assert one("postgres://u:p@DB.Example.COM/db").name == "db.example.com"


def test_ipv6_and_socket_hosts() -> None:
    assert one("postgres://u:p@[::1]:6000/db").pg.host == "::1"
    c = one("postgres://u@%2Fvar%2Frun%2FPostgreSQL/db")
    assert c.pg.host == "/var/run/PostgreSQL" and c.name == "/var/run/PostgreSQL"


def test_query_params_go_into_conninfo() -> None:
    c = one("postgres://u:p@h/db?sslmode=require&connect_timeout=3&application_name=nightly+run")
    assert c.pg.params == (("sslmode", "require"), ("connect_timeout", "3"), ("application_name", "nightly+run"))
    info = c.pg.conninfo()
    assert "sslmode='require'" in info and "connect_timeout='3'" in info
    assert "application_name='nightly+run'" in info  # libpq reads + literally, so do we
    assert "PGCONNECT_TIMEOUT" not in c.pg.env()  # the URL's own timeout wins


def test_ssl_true_means_sslmode_require_as_in_libpq_uris() -> None:
    assert one("postgres://u:p@h/db?ssl=true").pg.params == (("sslmode", "require"),)


def test_percent_encoded_database_name() -> None:
    c = one("postgres://u:p@h/my%20db%2Fx%25")
    assert c.pg.database == "my db/x%"


@pytest.mark.parametrize("password", [
    HOSTILE_PASSWORD,
    "@:/%,|#?&= é",
    "plain",
    "a%41b",  # a literal %41, not A
    "quote'and\\back\"slash",
    "ünïcødé-密码-🔑",
    " leading and trailing ",
    "p+q=r;s",
])
def test_percent_encoded_passwords_with_any_character(password: str) -> None:
    enc = urllib.parse.quote(password, safe="")
    items = [
        f"postgres://u:{enc}@h1:5432/db",
        f"pfx|bucket=b-1|postgres://u:{enc}@h2:5432/db?sslmode=prefer",
        f"c3@db_buckets=a=x-1,b=y-1@postgres://u:{enc}@h3/db",
    ]
    cfg = load({"S3_BUCKET": "global-bucket", "PG_URLS": ",".join(items)})
    assert [c.name for c in cfg.connections] == ["h1", "pfx", "c3"]
    for c in cfg.connections:
        assert c.pg.password is not None and c.pg.password.reveal() == password
        assert c.pg.env()["PGPASSWORD"] == password
        for text in (c.pg.conninfo(), c.pg.conninfo("other"), c.pg.display, repr(c), repr(cfg)):
            assert password not in text and enc not in text


def test_raw_colon_in_password_is_understood() -> None:
    # user:password splits at the first ':', as in libpq.
    c = one("postgres://u:p:ss:w0rd@h:5433/db")
    assert c.pg.password is not None and c.pg.password.reveal() == "p:ss:w0rd"
    assert (c.pg.host, c.pg.port) == ("h", 5433)


def test_raw_at_in_password_is_refused_as_libpq_would_misread_it() -> None:
    """libpq ends the password at the first '@' (psql reads postgres://u:p@ss@h/db as host 'ss@h'), so a raw
    '@' is refused rather than understood differently from every other PostgreSQL tool."""
    with pytest.raises(ConfigError, match=r"^PG_URLS item 1: field 'url': more than one '@'.*encode @ as %40"):
        one("postgres://u:p@ss:w0rd@h:5433/db")
    encoded = one("postgres://u:p%40ss:w0rd@h:5433/db").pg.password
    assert encoded is not None and encoded.reveal() == "p@ss:w0rd"


def test_percent_encoded_user() -> None:
    assert one("postgres://back%40up%20user:p@h/db").pg.user == "back@up user"


# --------------------------------------------------------------------------------------------------
# Metadata: positional, keyed, mixed, separators


def test_positional_all_six() -> None:
    c = one("pfx|bkt-1|http://minio:9000/|true|AKIAX|SECRETX|" + URL)
    assert (c.prefix, c.name, c.base_dir, c.bucket) == ("pfx", "pfx", "pfx", "bkt-1")
    assert c.s3.endpoint == "http://minio:9000"
    assert c.s3.force_path_style is True
    assert c.s3.access_key is not None and c.s3.access_key.reveal() == "AKIAX"
    assert c.s3.secret_key is not None and c.s3.secret_key.reveal() == "SECRETX"


@pytest.mark.parametrize(("meta", "expect"), [
    ("pfx|", {"prefix": "pfx", "bucket": "global-bucket"}),
    ("pfx|bkt-2|", {"prefix": "pfx", "bucket": "bkt-2"}),
    ("pfx|bkt-2|https://s3.example.com|", {"prefix": "pfx", "bucket": "bkt-2", "endpoint": "https://s3.example.com"}),
    ("pfx|bkt-2|http://m:9000|false|", {"prefix": "pfx", "bucket": "bkt-2", "endpoint": "http://m:9000",
                                        "force": False}),
    ("|bkt-2|", {"prefix": None, "bucket": "bkt-2"}),  # an empty positional field is skipped
    ("||http://m:9000|", {"prefix": None, "bucket": "global-bucket", "endpoint": "http://m:9000"}),
])
def test_positional_fewer(meta: str, expect: dict[str, object]) -> None:
    c = one(meta + URL, S3_ENDPOINT="http://global:9000", S3_FORCE_PATH_STYLE="true")
    assert c.prefix == expect["prefix"]
    assert c.bucket == expect["bucket"]
    assert c.s3.endpoint == expect.get("endpoint", "http://global:9000")
    assert c.s3.force_path_style is expect.get("force", True)


def test_keyed_every_key_and_alias() -> None:
    c = one("prefix=p1|bucket=b-1|endpoint=http://e:1|region=eu-west-3|force_path_style=yes|access_key=AK1|"
            "secret_key=SK1|db_buckets=a=x-1|ignore=skipme|retention_days=3|retention_weeks=4|"
            "retention_months=5|" + URL)
    assert (c.prefix, c.bucket, c.s3.endpoint, c.s3.region, c.s3.force_path_style) == (
        "p1", "b-1", "http://e:1", "eu-west-3", True)
    assert c.s3.access_key is not None and c.s3.access_key.reveal() == "AK1"
    assert c.s3.secret_key is not None and c.s3.secret_key.reveal() == "SK1"
    assert dict(c.db_buckets) == {"a": "x-1"}
    assert "skipme" in c.ignore
    assert (c.retention_days, c.retention_weeks, c.retention_months) == (3, 4, 5)
    d = one("forcepath=off|access=AK2|secret=SK2|" + URL, S3_FORCE_PATH_STYLE="true")
    assert d.s3.force_path_style is False
    assert d.s3.access_key is not None and d.s3.access_key.reveal() == "AK2"
    assert d.s3.secret_key is not None and d.s3.secret_key.reveal() == "SK2"


def test_keys_are_case_insensitive_and_values_may_contain_equals() -> None:
    c = one("BUCKET=b-1|Secret=abc=def=|Access=AK|" + URL)
    assert c.bucket == "b-1"
    assert c.s3.secret_key is not None and c.s3.secret_key.reveal() == "abc=def="


def test_readme_example_meta_annotated() -> None:
    c = one("myprefix|bucket=backups1|postgres://postgres:postgres@postgres:5432/postgres")
    assert (c.name, c.prefix, c.bucket, c.pg.host) == ("myprefix", "myprefix", "backups1", "postgres")


def test_mixed_positional_and_keyed() -> None:
    c = one("pfx|bucket=b-1|http://e:9000|region=sa-east-1|" + URL)
    assert (c.prefix, c.bucket, c.s3.endpoint, c.s3.region) == ("pfx", "b-1", "http://e:9000", "sa-east-1")


def test_at_separator_readme_example() -> None:
    c = one("conn1@db_buckets=prod=prod-backups,other=other-backups@postgres://user:pass@host:5432/postgres")
    assert (c.name, c.prefix, c.pg.host, c.pg.user) == ("conn1", "conn1", "host", "user")
    assert c.pg.password is not None and c.pg.password.reveal() == "pass"
    assert dict(c.db_buckets) == {"prod": "prod-backups", "other": "other-backups"}
    assert c.bucket_for("prod") == "prod-backups"
    assert c.bucket_for("other") == "other-backups"
    assert c.bucket_for("third") == "global-bucket"


def test_pipe_items_keep_at_signs_inside_values() -> None:
    c = one("pfx|secret=s3cr@t|access=AK|" + URL)
    assert c.s3.secret_key is not None and c.s3.secret_key.reveal() == "s3cr@t"


def test_last_separator_may_be_at_after_pipes() -> None:
    c = one("pfx|bkt-1@" + URL)
    assert (c.prefix, c.bucket) == ("pfx", "bkt-1")


def test_commas_inside_db_buckets_and_ignore() -> None:
    cs = conns("a@db_buckets=d1=b-1,d2=b-2,d3=b-3@ignore=x,y,z@" + URL + ","
               "b|ignore=p,q|db_buckets=e=b-4,f=b-5|postgres://u@other:1/db")
    assert [c.name for c in cs] == ["a", "b"]
    assert dict(cs[0].db_buckets) == {"d1": "b-1", "d2": "b-2", "d3": "b-3"}
    assert cs[0].ignore == {"x", "y", "z"}
    assert dict(cs[1].db_buckets) == {"e": "b-4", "f": "b-5"}
    assert cs[1].ignore == {"p", "q"}


def test_db_buckets_database_names_may_contain_equals() -> None:
    assert dict(one("db_buckets=a=b=bkt-1, c d =bkt-2|" + URL).db_buckets) == {"a=b": "bkt-1", "c d": "bkt-2"}


def test_several_items_whitespace_and_trailing_comma() -> None:
    cs = conns(f"  {URL} ,\n p2|postgres://u:p@h2/db ,postgres://u@h3:7000/x,")
    assert [(c.index, c.name) for c in cs] == [(0, "db.example.com"), (1, "p2"), (2, "h3")]
    assert cs[2].pg.port == 7000


# --------------------------------------------------------------------------------------------------
# Names


def test_name_is_prefix_else_host() -> None:
    cs = conns("pfx|postgres://u@h/db,postgres://u@h/db2,postgres://u@other/db")
    assert [c.name for c in cs] == ["pfx", "h", "other"]


def test_host_clash_gives_host_port_names_and_folders() -> None:
    cs = conns("postgres://u@h:5432/db,postgres://u@h:5433/db,postgres://u@k/db")
    assert [c.name for c in cs] == ["h:5432", "h:5433", "k"]
    assert [c.base_dir for c in cs] == ["h:5432", "h:5433", "k"]


def test_prefixed_item_does_not_clash_with_its_host() -> None:
    cs = conns("p|postgres://u@h/db,postgres://u@h/db")
    assert [c.name for c in cs] == ["p", "h"]


def test_connection_lookup_by_name_and_index() -> None:
    cfg = load({"S3_BUCKET": "global-bucket", "PG_URLS": "p|postgres://u@h/db,postgres://u@k/db"})
    assert cfg.connection("p").index == 0
    assert cfg.connection("k").index == 1
    assert cfg.connection(1).name == "k"
    assert cfg.connection("0").name == "p"
    with pytest.raises(ConfigError, match="unknown connection 'nope'"):
        cfg.connection("nope")


# --------------------------------------------------------------------------------------------------
# Overrides, fallbacks, routing


GLOBAL_S3 = {
    "S3_ENDPOINT": "http://global:9000/",
    "S3_REGION": "us-east-2",
    "S3_FORCE_PATH_STYLE": "true",
    "S3_ACCESS_KEY": "GLOBALAK",
    "S3_SECRET_KEY": "GLOBALSK",
    "RETENTION_DAYS": "7",
    "RETENTION_WEEKS": "4",
    "RETENTION_MONTHS": "12",
}


def test_globals_apply_where_not_overridden() -> None:
    c = one(URL, **GLOBAL_S3)
    assert (c.s3.endpoint, c.s3.region, c.s3.force_path_style) == ("http://global:9000", "us-east-2", True)
    assert c.s3.access_key is not None and c.s3.access_key.reveal() == "GLOBALAK"
    assert c.s3.secret_key is not None and c.s3.secret_key.reveal() == "GLOBALSK"
    assert (c.retention_days, c.retention_weeks, c.retention_months) == (7, 4, 12)


def test_per_connection_overrides() -> None:
    cs = conns("a|endpoint=http://e2:1|region=r2|forcepath=false|access=AK2|secret=SK2|retention_days=1|"
               "retention_weeks=0|retention_months=2|" + URL + ",b|postgres://u@h2/db", **GLOBAL_S3)
    a, b = cs
    assert (a.s3.endpoint, a.s3.region, a.s3.force_path_style) == ("http://e2:1", "r2", False)
    assert a.s3.access_key is not None and a.s3.access_key.reveal() == "AK2"
    assert a.s3.secret_key is not None and a.s3.secret_key.reveal() == "SK2"
    assert (a.retention_days, a.retention_weeks, a.retention_months) == (1, 0, 2)
    assert b.s3 == one(URL, **GLOBAL_S3).s3  # untouched item: exactly the globals (and one shared client)
    assert (b.retention_days, b.retention_weeks, b.retention_months) == (7, 4, 12)


def test_one_key_per_item_completes_with_the_global_other_half() -> None:
    c = one("secret=SK3|" + URL, **GLOBAL_S3)
    assert c.s3.access_key is not None and c.s3.access_key.reveal() == "GLOBALAK"
    assert c.s3.secret_key is not None and c.s3.secret_key.reveal() == "SK3"


def test_s3_defaults() -> None:
    c = one(URL)
    assert c.s3 == config.S3Settings()
    assert (c.s3.endpoint, c.s3.region, c.s3.access_key, c.s3.force_path_style, c.s3.checksum) == (
        None, None, None, False, "auto")
    assert (c.retention_days, c.retention_weeks, c.retention_months) == (0, 0, 0)


def test_s3_tuning_variables() -> None:
    c = one(URL, S3_CHECKSUM="OFF", S3_MAX_ATTEMPTS="9", S3_PART_SIZE_MB="16", S3_UPLOAD_CONCURRENCY="2")
    assert (c.s3.checksum, c.s3.max_attempts, c.s3.part_size, c.s3.concurrency) == ("off", 9, 16 << 20, 2)


def test_bucket_routing_precedence() -> None:
    cs = conns("a|bucket=conn-bkt|db_buckets=sales=sales-bkt|" + URL + ","
               "b|db_buckets=sales=sales-bkt|postgres://u@h2/db,"
               "c|postgres://u@h3/db")
    a, b, c = cs
    assert (a.bucket_for("sales"), a.bucket_for("other")) == ("sales-bkt", "conn-bkt")
    assert (b.bucket_for("sales"), b.bucket_for("other")) == ("sales-bkt", "global-bucket")
    assert c.bucket_for("x") == "global-bucket"


def test_db_buckets_alone_without_any_default_bucket() -> None:
    cfg = load({"PG_URLS": "db_buckets=sales=sales-bkt|" + URL})
    c = cfg.connections[0]
    assert c.bucket is None
    assert c.bucket_for("sales") == "sales-bkt"
    assert c.bucket_for("other") is None  # pipeline.plan turns this into a ConfigError before any dump


def test_ignore_lists_are_merged() -> None:
    cs = conns("a|ignore=x, y|" + URL + ",postgres://u@h2/db", IGNORE_DATABASES="postgres, template0,,")
    assert cs[0].ignore == {"postgres", "template0", "x", "y"}
    assert cs[1].ignore == {"postgres", "template0"}


# --------------------------------------------------------------------------------------------------
# Global variables


def test_global_defaults() -> None:
    cfg = load({"PG_URLS": URL, "S3_BUCKET": "b-1"})
    assert isinstance(cfg, Config)
    assert cfg.timezone.key == "America/Sao_Paulo"
    assert (cfg.global_prefix, cfg.zip_password, cfg.compression_level, cfg.compression_threads) == ("", None, 6, None)
    assert (cfg.log_level, cfg.log_format, cfg.pg_bindir) == ("INFO", None, None)


def test_empty_values_count_as_unset() -> None:
    blank = {k: "" for k in ("TIMEZONE", "S3_ENDPOINT", "S3_REGION", "S3_ACCESS_KEY", "S3_SECRET_KEY",
                             "S3_FORCE_PATH_STYLE", "S3_CHECKSUM", "S3_MAX_ATTEMPTS", "S3_PART_SIZE_MB",
                             "S3_UPLOAD_CONCURRENCY", "GLOBAL_PREFIX", "IGNORE_DATABASES", "ZIP_PASSWORD",
                             "ZIP_COMPRESSION_LEVEL", "COMPRESSION_THREADS", "LOG_LEVEL", "LOG_FORMAT",
                             "PG_BIN_DIR", "RETENTION_DAYS", "RETENTION_WEEKS", "RETENTION_MONTHS")}
    cfg = load({**blank, "PG_URLS": URL, "S3_BUCKET": "b-1"})
    assert cfg.timezone.key == "America/Sao_Paulo" and cfg.compression_level == 6
    assert cfg.connections[0].s3 == config.S3Settings()


def test_global_values() -> None:
    cfg = load({"PG_URLS": URL, "S3_BUCKET": "b-1", "TIMEZONE": "UTC", "GLOBAL_PREFIX": "/a//b/",
                "ZIP_PASSWORD": " zip pass ", "ZIP_COMPRESSION_LEVEL": "9", "COMPRESSION_THREADS": "3",
                "LOG_LEVEL": "warn", "LOG_FORMAT": "JSON"})
    assert cfg.timezone.key == "UTC"
    assert cfg.global_prefix == "a/b"
    assert cfg.zip_password is not None and cfg.zip_password.reveal() == " zip pass "  # kept exactly
    assert (cfg.compression_level, cfg.compression_threads, cfg.log_level, cfg.log_format) == (9, 3, "WARNING", "json")
    assert "zip pass" not in repr(cfg)


@pytest.mark.parametrize(("raw", "prefix"), [("a/.b/..c/c..", "a/.b/..c/c.."), ("/x//y/", "x/y"), ("...", "...")])
def test_global_prefix_may_hold_dots_inside_names(raw: str, prefix: str) -> None:
    assert load({"PG_URLS": URL, "S3_BUCKET": "b-1", "GLOBAL_PREFIX": raw}).global_prefix == prefix


def test_access_key_is_an_identifier_and_not_scrubbed() -> None:
    """An access key ID is not secret; scrubbing 'minio' garbled http://minio:9000 in every message."""
    cfg = load({"PG_URLS": "access=minioadmin|secret=per-item-secret|" + URL, "S3_BUCKET": "b-1",
                "S3_ACCESS_KEY": "minioadmin-global", "S3_SECRET_KEY": "global-secret-key"})
    assert cfg.connections[0].s3.access_key is not None
    assert cfg.connections[0].s3.access_key.reveal() == "minioadmin"
    assert redact("http://minioadmin:9000 minioadmin-global") == "http://minioadmin:9000 minioadmin-global"
    assert redact("per-item-secret global-secret-key") == "**redacted** **redacted**"


def test_short_zip_password_warns_without_showing_it(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pgbkp.config"):
        cfg = load({"PG_URLS": URL, "S3_BUCKET": "b-1", "ZIP_PASSWORD": "backup12345"})  # 11 characters
    assert cfg.zip_password is not None and cfg.zip_password.reveal() == "backup12345"  # still used
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("pgbkp.config", "WARNING", "ZIP_PASSWORD: shorter than 12 characters, so anyone holding an archive can "
         "guess it offline. Fix: use a passphrase of 12 characters or more.")]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pgbkp.config"):
        load({"PG_URLS": URL, "S3_BUCKET": "b-1", "ZIP_PASSWORD": "backup123456"})  # 12 characters
        load({"PG_URLS": URL, "S3_BUCKET": "b-1"})  # no password: a plain ZIP, nothing to warn about
    assert caplog.records == []


def test_pg_bin_dir(tmp_path: Path) -> None:
    for tool in ("pg_dump", "psql"):
        (tmp_path / tool).touch()
    assert load({"PG_URLS": URL, "S3_BUCKET": "b-1", "PG_BIN_DIR": str(tmp_path)}).pg_bindir == tmp_path


def test_load_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_URLS", URL)
    monkeypatch.setenv("S3_BUCKET", "from-environ")
    assert load().connections[0].bucket == "from-environ"


# --------------------------------------------------------------------------------------------------
# conninfo: no password, and quoting that survives any database name


WEIRD_NAMES = [
    "we'ird \\ \"db\" é/x",
    "a=b",
    "postgresql://not-a-uri",
    "host=evil port=1",
    "  spaces  ",
    "semi;colon -- 'x'",
    "new\nline",
]


@pytest.mark.parametrize("name", WEIRD_NAMES)
def test_conninfo_quotes_any_database_name(name: str) -> None:
    target = one(URL).pg
    info = target.conninfo(name)
    assert info.startswith("host='db.example.com' port='5432' user='user' dbname='")
    quoted = "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"
    assert info.endswith(f"dbname={quoted}")
    assert "pw" not in info.replace("pwd", "")


def test_conninfo_for_real_on_weird_database_names(pg: PgCluster) -> None:
    """psql really connects to each weird name through our conninfo, with the password from env."""
    tag = uuid.uuid4().hex[:6]
    names = [f"{n} {tag}" for n in WEIRD_NAMES]
    target = one(pg.url()).pg
    assert target.password is not None and target.password.reveal() == pg.password
    assert pg.password not in target.conninfo()
    for name in names:
        pg.create_database(name)
    try:
        for name in names:
            assert postgres.run_sql(target, "select current_database()", database=name) == [[name]]
        _, found = postgres.list_databases(target)
        assert set(names) <= {d.name for d in found}
    finally:
        for name in names:
            pg.drop_database(name)


def test_query_params_reach_libpq_for_real(pg: PgCluster) -> None:
    """sslmode=disable and application_name from the URL are used by the real connection."""
    target = one(pg.url("postgres", sslmode="disable", application_name="cfg-test")).pg
    rows = postgres.run_sql(target, "select current_setting('application_name'), "
                            "(select ssl from pg_stat_ssl where pid = pg_backend_pid())")
    assert rows == [["cfg-test", "f"]]
