"""Issue 14, part A, in the configuration: RETENTION_KEEP_LAST and keep_last=, databases=, the exclude
fields and PG_DUMP_ARGS, parsed, checked and refused with one line that names the item and the field.

What they do to a real backup is in test_selection_backup.py (PgCluster, restored contents)."""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

import pytest

from pgbkp import config, pipeline
from pgbkp.config import ConfigError, dumpargs, load
from pgbkp.storage.memory import MemoryStorage
from tests.fakes import FakeDatabase, FakeDumpSource
from tests.test_layer_binaries import layer  # noqa: F401 - the fixture: the built PostgreSQL 18 client

URL = "postgres://user:pw@db.example.com:5432/postgres"


def one(pg_urls: str, **env: str) -> config.Connection:
    cfg = load({"S3_BUCKET": "global-bucket", **env, "PG_URLS": pg_urls})
    assert len(cfg.connections) == 1
    return cfg.connections[0]


def refused(pg_urls: str, message: str, **env: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({"S3_BUCKET": "global-bucket", **env, "PG_URLS": pg_urls})
    assert str(info.value) == message


# --------------------------------------------------------------------------------------------------
# RETENTION_KEEP_LAST, keep_last=


def test_keep_last_defaults_to_one_and_reaches_the_policy() -> None:
    c = one(URL, RETENTION_DAYS="7")
    assert c.retention_keep_last == 1
    assert pipeline.policy_for(c) == pipeline.retention.Policy(days=7, keep_last=1)
    c = one(URL, RETENTION_DAYS="7", RETENTION_KEEP_LAST="5")
    assert pipeline.policy_for(c) == pipeline.retention.Policy(days=7, keep_last=5)


def test_keep_last_per_connection_overrides_the_global() -> None:
    cfg = load({"S3_BUCKET": "b-1", "RETENTION_DAYS": "3", "RETENTION_KEEP_LAST": "4",
                "PG_URLS": f"a|keep_last=9|{URL},b|retention_keep_last=2|postgres://u@h2/postgres,"
                           "c|postgres://u@h3/postgres"})
    assert [c.retention_keep_last for c in cfg.connections] == [9, 2, 4]


@pytest.mark.parametrize(("env", "pg_urls", "message"), [
    ({"RETENTION_KEEP_LAST": "0"}, URL,
     "RETENTION_KEEP_LAST: 0 is out of range. Fix: use a number from 1 to 100000."),
    ({"RETENTION_KEEP_LAST": "three"}, URL,
     "RETENTION_KEEP_LAST: 'three' is not a whole number. Fix: use a number such as 7."),
    ({}, f"a|keep_last=0|{URL}",
     "PG_URLS item 1 (a): field 'retention_keep_last': 0 is out of range. Fix: use a number from 1 to 100000."),
    ({}, f"a|keep_last=1|retention_keep_last=2|{URL}",
     "PG_URLS item 1 (a): field 'retention_keep_last' is given twice. Fix: keep only one."),
])
def test_keep_last_refused(env: dict[str, str], pg_urls: str, message: str) -> None:
    refused(pg_urls, message, **env)


def test_keep_last_is_no_typo() -> None:
    assert not any("RETENTION_KEEP_LAST" in w for w in load({"S3_BUCKET": "b-1", "PG_URLS": URL,
                                                              "RETENTION_KEEP_LAST": "3"}).warnings)
    assert [w for w in config.typo_warnings({"RETENTION_KEEP_LASTS": "3"}) if re.search("KEEP_LAST\\b", w)]


# --------------------------------------------------------------------------------------------------
# PG_DUMP_ARGS, pg_dump_args=


def test_dump_args_are_split_checked_and_written_long() -> None:
    c = one(URL, PG_DUMP_ARGS="--no-owner -x --no-acl --rows-per-insert 100 --extra-float-digits=-3 "
                              "--role='backup role' -E UTF8 --no-blobs")
    assert c.dump_args == ("--no-owner", "--no-privileges", "--no-privileges", "--rows-per-insert=100",
                           "--extra-float-digits=-3", "--role=backup role", "--encoding=UTF8", "--no-large-objects")
    assert c.dump_args_for("any") == c.dump_args


def test_an_items_pg_dump_args_replace_the_global_ones() -> None:
    cfg = load({"S3_BUCKET": "b-1", "PG_DUMP_ARGS": "--no-owner",
                "PG_URLS": f"a|pg_dump_args=--inserts --no-comments|{URL},b|pg_dump_args=|postgres://u@h2/postgres,"
                           "c|postgres://u@h3/postgres"})
    assert [c.dump_args for c in cfg.connections] == [("--inserts", "--no-comments"), (), ("--no-owner",)]


REFUSED_FLAGS = [
    ("-F c", "-F (--format) is not allowed: restore reads the plain SQL format (-F p) that pg-bkp streams into the "
             "ZIP. Fix: remove it."),
    ("-Fd", "-F (--format) is not allowed: restore reads the plain SQL format (-F p) that pg-bkp streams into the "
            "ZIP. Fix: remove it."),
    ("--format=custom", "--format is not allowed: restore reads the plain SQL format (-F p) that pg-bkp streams into "
                        "the ZIP. Fix: remove it."),
    ("-f out.sql", "-f (--file) is not allowed: the dump goes to standard output, which pg-bkp streams into the ZIP. "
                   "Fix: remove it."),
    ("--file=/tmp/x", "--file is not allowed: the dump goes to standard output, which pg-bkp streams into the ZIP. "
                      "Fix: remove it."),
    ("-j 4", "-j (--jobs) is not allowed: parallel dumps need the directory format, which cannot be streamed. "
             "Fix: remove it."),
    ("--jobs=4", "--jobs is not allowed: parallel dumps need the directory format, which cannot be streamed. "
                 "Fix: remove it."),
    ("-Z 9", "-Z (--compress) is not allowed: the ZIP compresses the dump already. Fix: remove it; "
             "ZIP_COMPRESSION_LEVEL sets the level."),
    ("--compress=gzip:9", "--compress is not allowed: the ZIP compresses the dump already. Fix: remove it; "
                          "ZIP_COMPRESSION_LEVEL sets the level."),
    ("-d other", "-d (--dbname) is not allowed: the connection comes from the PG_URLS item's URL. Fix: write it in "
                 "the URL (postgres://USER:PASSWORD@HOST:PORT/DATABASE; a role to switch to is --role=NAME)."),
    ("--host=evil", "--host is not allowed: the connection comes from the PG_URLS item's URL. Fix: write it in the "
                    "URL (postgres://USER:PASSWORD@HOST:PORT/DATABASE; a role to switch to is --role=NAME)."),
    ("-p 6432", "-p (--port) is not allowed: the connection comes from the PG_URLS item's URL. Fix: write it in the "
                "URL (postgres://USER:PASSWORD@HOST:PORT/DATABASE; a role to switch to is --role=NAME)."),
    ("-U root", "-U (--username) is not allowed: the connection comes from the PG_URLS item's URL. Fix: write it in "
                "the URL (postgres://USER:PASSWORD@HOST:PORT/DATABASE; a role to switch to is --role=NAME)."),
    ("-W", "-W (--password) is not allowed: the connection comes from the PG_URLS item's URL. Fix: write it in the "
           "URL (postgres://USER:PASSWORD@HOST:PORT/DATABASE; a role to switch to is --role=NAME)."),
    ("--lock-wait-timeout=5s", "--lock-wait-timeout is not allowed: pg-bkp sets it. Fix: set "
                               "PG_LOCK_WAIT_TIMEOUT_SECONDS instead."),
    ("-c", "-c (--clean) is not allowed: pgbkp restore writes into an empty database it names itself, where DROP or "
           "CREATE DATABASE statements would fail or write elsewhere. Fix: remove it."),
    ("--create", "--create is not allowed: pgbkp restore writes into an empty database it names itself, where DROP "
                 "or CREATE DATABASE statements would fail or write elsewhere. Fix: remove it."),
    ("-t users", "-t (--table) is not allowed: a backup holds a whole database. Fix: choose databases with "
                 "databases= and leave out what you do not need with exclude_schema=, exclude_table= or "
                 "exclude_table_data= in the PG_URLS item."),
    ("-T audit", "-T (--exclude-table) is not allowed: exclusions are set in PG_URLS, per connection or per "
                 "database, where --dry-run shows them. Fix: write exclude_table=PATTERN in the PG_URLS item (or "
                 "db_exclude_table=DATABASE=PATTERN)."),
    ("--exclude-table-data=log", "--exclude-table-data is not allowed: exclusions are set in PG_URLS, per connection "
                                 "or per database, where --dry-run shows them. Fix: write exclude_table_data=PATTERN "
                                 "in the PG_URLS item (or db_exclude_table_data=DATABASE=PATTERN)."),
    ("-s", "-s (--schema-only) is not allowed: a backup holds a whole database, its schema and its data. Fix: leave "
           "out the data of some tables with exclude_table_data= in the PG_URLS item."),
    ("--filter=/etc/passwd", "--filter is not allowed: it reads a file on the machine that runs pg_dump. Fix: write "
                             "exclude_schema=, exclude_table= or exclude_table_data= in the PG_URLS item."),
    ("--restrict-key=abc", "--restrict-key is not allowed: pgbkp restore runs psql under a \\restrict key of its "
                           "own. Fix: remove it."),
    ("-V", "-V (--version) is not allowed: pg_dump would print its version instead of a dump. Fix: remove it."),
    # A partial backup with no word of it, and a restore that writes to another server.
    ("--enable-row-security", "--enable-row-security is not allowed: pg_dump then dumps only the rows the backup "
                              "user may see under row-level security, a backup that lacks rows without a word "
                              "(without it, pg_dump fails instead). Fix: let the backup user read every row "
                              "(BYPASSRLS, or the tables' owner) and remove it."),
    ("--include-foreign-data=remote", "--include-foreign-data is not allowed: a restore, and every pgbkp verify, "
                                      "would write those rows back through the foreign server into the remote "
                                      "table. Fix: back up the remote server itself, and remove it."),
]


@pytest.mark.parametrize(("args", "message"), REFUSED_FLAGS, ids=[a for a, _ in REFUSED_FLAGS])
def test_pg_dump_args_refuse_what_breaks_the_stream_or_the_format(args: str, message: str) -> None:
    refused(URL, f"PG_DUMP_ARGS: {message}", PG_DUMP_ARGS=f"--no-owner {args}")
    refused(f"a|pg_dump_args={args}|{URL}", f"PG_URLS item 1 (a): field 'pg_dump_args': {message}")


@pytest.mark.parametrize(("args", "message"), [
    ("--no-owners", "'--no-owners' is not a pg_dump flag pg-bkp passes on (did you mean --no-owner?). Fix: remove it; "
                    "allowed: "),
    ("-Ox", "'-Ox' puts several short flags together. Fix: write each on its own, in its long form (--no-owner "
            "--no-privileges)."),
    ("-q", "'-q' is not a pg_dump flag. Fix: remove it; pg-bkp passes on only "),
    ("mydb", "'mydb' is not a flag (it does not start with -). Fix: remove it; the database and the connection come "
             "from PG_URLS."),
    ("--no-owner=yes", "--no-owner takes no value. Fix: write --no-owner alone."),
    ("--rows-per-insert", "--rows-per-insert needs a value. Fix: write --rows-per-insert=VALUE."),
    ("--rows-per-insert=0", "--rows-per-insert='0' is not a whole number from 1 to 2147483647. Fix: write "
                            "--rows-per-insert=N with N in that range."),
    ("--extra-float-digits=--5", "--extra-float-digits='--5' is not a whole number from -15 to 3. Fix: write "
                                 "--extra-float-digits=N with N in that range."),
    ("--role=", "--role: is empty. Fix: give a value, or leave it out."),
    ("'--role=a\x1bb'", "'--role=a\\x1bb' contains a control character. Fix: remove it."),
    ("--no-owner 'unclosed", "cannot split it into words (No closing quotation). Fix: close the quote, or drop it "
                             "(the flags pg-bkp allows take no spaces)."),
])
def test_pg_dump_args_other_mistakes(args: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({"S3_BUCKET": "b-1", "PG_URLS": URL, "PG_DUMP_ARGS": args})
    assert str(info.value).startswith(f"PG_DUMP_ARGS: {message}")


def test_every_allowed_flag_is_a_pg_dump_18_flag_and_none_is_refused(layer: Path) -> None:  # noqa: F811
    """Checked against the help of the image's pg_dump (the layer's, 18): a flag renamed or gone there
    fails here, not in a user's backup."""
    help_text = subprocess.run([str(layer / "bin" / "pg_dump"), "--help"], capture_output=True, text=True,
                               check=True).stdout
    known = set(re.findall(r"(--[a-z][a-z-]+)", help_text)) | set(dumpargs.ALIASES) - {"--no-acl"}
    assert set(dumpargs.ALLOWED) <= known
    assert set(dumpargs.REFUSED) <= known
    assert not set(dumpargs.ALLOWED) & set(dumpargs.REFUSED)
    assert set(dumpargs.SHORT.values()) <= set(dumpargs.ALLOWED) | set(dumpargs.REFUSED)


# --------------------------------------------------------------------------------------------------
# databases=, the exclude fields


def test_databases_and_excludes_parse_into_the_connection() -> None:
    c = one('a|databases=app, app_*,"we,ird*"|exclude_schema=tmp|exclude_table=audit_*,"Big Table"|'
            'exclude_table_data=public.events|db_exclude_table=app=log_*,app=x?,crm=sessions|'
            f'db_exclude_table_data=crm="a=b"|pg_dump_args=--no-owner|{URL}')
    assert c.databases == ("app", "app_*", '"we,ird*"')
    assert c.dump_args == ("--no-owner", "--exclude-schema=tmp", "--exclude-table=audit_*",
                           '--exclude-table="Big Table"', "--exclude-table-data=public.events")
    assert dict(c.db_dump_args) == {"app": ("--exclude-table=log_*", "--exclude-table=x?"),
                                    "crm": ("--exclude-table=sessions", '--exclude-table-data="a=b"')}
    assert c.dump_args_for("crm")[-2:] == ("--exclude-table=sessions", '--exclude-table-data="a=b"')
    assert c.dump_args_for("other") == c.dump_args


def test_db_exclude_names_a_database_in_double_quotes_as_databases_does() -> None:
    """A database named with a comma or an = (written in quotes) got the exclusion under its quoted spelling,
    which names no database: its backup silently kept what was to be left out."""
    c = one(f'a|db_exclude_table="a=b,c"=log_*,"say""hi"=x,app=y=z|{URL}')
    assert dict(c.db_dump_args) == {"a=b,c": ("--exclude-table=log_*",), 'say"hi': ("--exclude-table=x",),
                                    "app": ("--exclude-table=y=z",)}


@pytest.mark.parametrize(("names", "include", "chosen", "missing", "unmatched"), [
    (["app", "app_1", "App_2", "crm"], [], ["app", "app_1", "App_2", "crm"], [], []),
    (["app", "app_1", "App_2", "crm"], ["app_*"], ["app_1"], [], []),  # case counts, as in ignore=
    (["app", "app_1", "app_22", "crm"], ["app_?"], ["app_1"], [], []),
    (["app", "crm"], ["crm", "gone", "x*", "gone"], ["crm"], ["gone"], ["x*"]),
    (["a*b", "axb"], ['"a*b"'], ["a*b"], [], []),  # quoted: a name, not a pattern
    (["a*b", "axb"], ["a*b"], ["a*b", "axb"], [], []),
    (['say"hi', "x"], ['"say""hi"'], ['say"hi'], [], []),
    (["a.b", "axb"], ["a.b"], ["a.b"], [], []),  # no regex: . is a dot
    (["line\nbreak"], ["line*"], ["line\nbreak"], [], []),
])
def test_select(names: list[str], include: list[str], chosen: list[str], missing: list[str],
                unmatched: list[str]) -> None:
    assert config.select(names, include) == config.Selection(tuple(chosen), tuple(missing), tuple(unmatched))


@pytest.mark.parametrize(("fields", "message"), [
    ("databases=", "field 'databases': is empty. Fix: list one or more names or patterns (a,b_*), or leave it out."),
    ("databases=a,,b", "field 'databases': item 2 is empty. Fix: remove the extra comma."),
    ('databases=a,"b', "field 'databases': item 2: '\"b' has an unbalanced double quote. Fix: close the quote (a \" "
                       'inside quotes is written "").'),
    ("exclude_table=a,", "field 'exclude_table': item 2 is empty. Fix: remove the extra comma."),
    ("exclude_schema=a\tb", "field 'exclude_schema': item 1: 'a\\tb' contains a control character. Fix: remove it."),
    ("exclude_table_data=\x7f", "field 'exclude_table_data': item 1: '\\x7f' contains a control character. "
                                "Fix: remove it."),
    ("db_exclude_table=app", "field 'db_exclude_table': item 1 ('app') is not DATABASE=PATTERN. Fix: write "
                             "db1=pattern,db2=pattern (a database may be named again for more patterns)."),
    ("db_exclude_table=app=", "field 'db_exclude_table': item 1 ('app=') is not DATABASE=PATTERN. Fix: write "
                              "db1=pattern,db2=pattern (a database may be named again for more patterns)."),
    ("db_exclude_schema=app=a,,", "field 'db_exclude_schema': item 2 is empty. Fix: remove the extra comma."),
    ("databases=a|databases=b", "field 'databases' is given twice. Fix: keep only one."),
])
def test_selection_fields_refused(fields: str, message: str) -> None:
    refused(f"a|{fields}|{URL}", f"PG_URLS item 1 (a): {message}")


# --------------------------------------------------------------------------------------------------
# plan() and run() with databases= and the excludes, on a fake server (the real one: test_selection_backup.py)


def fake_plan(pg_urls: str, names: list[str], **env: str) -> tuple[pipeline.Plan, FakeDumpSource]:
    cfg = load({"S3_BUCKET": "bkt", "TIMEZONE": "UTC", **env, "PG_URLS": pg_urls})
    source = FakeDumpSource({"main": [FakeDatabase(n) for n in names]})
    return pipeline.plan(cfg, source=source), source


def test_plan_picks_the_include_list_minus_ignore(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pgbkp.pipeline"):
        the_plan, _ = fake_plan(f"main|databases=app*,crm,gone,tmp_*|ignore=app_old|{URL}",
                                ["app", "app_new", "app_old", "crm", "other"], IGNORE_DATABASES="crm")
    assert [j.database for j in the_plan.jobs] == ["app", "app_new"]
    assert [(s.database, s.reason) for s in the_plan.skipped] == [
        ("tmp_*", "databases= pattern 'tmp_*' matched no database on user@db.example.com:5432/postgres (found: "
                  "'app', 'app_new', 'app_old', 'crm', 'other')"),
        ("app_old", pipeline.IGNORED), ("crm", pipeline.IGNORED)]
    assert [(r.database, r.status, r.error) for r in the_plan.failures] == [
        ("gone", "failed", "PG_URLS item 1 (main): field 'databases': no database 'gone' on "
                           "user@db.example.com:5432/postgres (templates and databases that refuse connections are "
                           "never backed up). Fix: correct the name (found: 'app', 'app_new', 'app_old', 'crm', "
                           "'other'), or remove it from databases=.")]
    assert ("pgbkp.pipeline", logging.WARNING, "skipped tmp_*: " + the_plan.skipped[0].reason) in caplog.record_tuples


def test_without_databases_every_database_is_planned_as_before() -> None:
    the_plan, _ = fake_plan(f"main|ignore=b|{URL}", ["a", "b", "c"])
    assert [j.database for j in the_plan.jobs] == ["a", "c"]
    assert [j.dump_args for j in the_plan.jobs] == [(), ()]


def test_the_urls_database_is_only_where_to_connect(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pgbkp.pipeline"):
        the_plan, _ = fake_plan("main|postgres://user:pw@db.example.com:5432/app", ["app", "crm"])
    assert [j.database for j in the_plan.jobs] == ["app", "crm"]
    assert ("PG_URLS item 1 (main): the URL's database 'app' only chooses where to connect: every database is "
            "backed up (databases= picks some)") in caplog.messages
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pgbkp.pipeline"):
        the_plan, _ = fake_plan("main|databases=app|postgres://user:pw@db.example.com:5432/app", ["app", "crm"])
    assert [j.database for j in the_plan.jobs] == ["app"]
    assert not [m for m in caplog.messages if "only chooses" in m]


def test_each_dump_gets_its_flags_and_a_dry_run_shows_them(caplog: pytest.LogCaptureFixture) -> None:
    pg_urls = (f"main|databases=app,crm|exclude_table=audit_*|db_exclude_table_data=crm=sessions|"
               f"db_exclude_schema=nothere=x|{URL}")
    with caplog.at_level(logging.INFO, logger="pgbkp.pipeline"):
        the_plan, source = fake_plan(pg_urls, ["app", "crm"], PG_DUMP_ARGS="--no-owner")
    assert {j.database: j.dump_args for j in the_plan.jobs} == {
        "app": ("--no-owner", "--exclude-table=audit_*"),
        "crm": ("--no-owner", "--exclude-table=audit_*", "--exclude-table-data=sessions")}
    assert "app: pg_dump --no-owner '--exclude-table=audit_*'" in caplog.messages
    assert "crm: pg_dump --no-owner '--exclude-table=audit_*' --exclude-table-data=sessions" in caplog.messages
    assert ("PG_URLS item 1 (main): the db_exclude_* fields name database 'nothere', which "
            "user@db.example.com:5432/postgres does not list") in caplog.messages
    cfg = load({"S3_BUCKET": "bkt", "TIMEZONE": "UTC", "PG_DUMP_ARGS": "--no-owner", "PG_URLS": pg_urls})
    result = pipeline.run(cfg, the_plan, storage_for=lambda c: MemoryStorage(["bkt"]), source=source)
    assert [r.status for r in result.results] == ["ok", "ok"]
    assert source.dump_args == {"main/app": ("--no-owner", "--exclude-table=audit_*"),
                                "main/crm": ("--no-owner", "--exclude-table=audit_*",
                                             "--exclude-table-data=sessions")}
