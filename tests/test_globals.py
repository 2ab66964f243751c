"""Roles and other globals (issue 14): planned, stored, listed and retained like a database, in a folder
no database can take. Logic on MemoryStorage with the fake source; the real pg_dumpall and psql are in
test_globals_pg.py."""

from __future__ import annotations

import io
import re
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgbkp import config, handler_core, keys, pipeline, restore, roles
from pgbkp.archive import iter_member
from pgbkp.storage.memory import MemoryStorage
from tests.fakes import FakeDatabase, FakeDumpSource

BUCKET = "bkt"
URL = "postgres://u@db.invalid/postgres"
ENV = {"PG_URLS": f"main|globals=true|{URL},other|{URL.replace('db.', 'db2.')}", "S3_BUCKET": BUCKET,
       "TIMEZONE": "UTC", "COMPRESSION_THREADS": "1", "RETENTION_DAYS": "1"}
NOW = datetime(2026, 3, 4, 5, 6)


def source() -> FakeDumpSource:
    return FakeDumpSource({"main": [FakeDatabase("shop"), FakeDatabase("app")], "other": [FakeDatabase("x")]})


def edge(store: MemoryStorage, src: FakeDumpSource) -> handler_core.Edge:
    return handler_core.Edge(storage_for=lambda conn: store, source=src)


# --------------------------------------------------------------------------------------------------
# The reserved folder


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=20), st.text(max_size=20))
def test_no_database_name_can_take_the_globals_folder(database: str, base_dir: str, global_prefix: str) -> None:
    assert keys.folder(global_prefix, base_dir, database) != keys.globals_folder(global_prefix, base_dir)
    key = keys.object_key(global_prefix, base_dir, database, NOW, None)
    assert not keys.is_globals_key(key, global_prefix, base_dir)
    assert keys.parse_key(key, global_prefix, base_dir, None) == (database, NOW)


def test_the_globals_segment_is_no_encoding_of_any_name() -> None:
    """encode_name writes every % as %25: a % followed by g never comes out of it."""
    assert keys.decode_name(keys.GLOBALS_SEGMENT) == keys.GLOBALS_SEGMENT
    assert keys.encode_name(keys.decode_name(keys.GLOBALS_SEGMENT)) != keys.GLOBALS_SEGMENT
    assert keys.encode_name("%globals") == "%25globals"


def test_globals_key_is_named_like_a_database_backup_and_parses_back() -> None:
    key = keys.globals_key("nightly", "main", NOW, "main")
    assert key == "nightly/main/%globals/main-globals-05h-06m-04d-03mes-2026y.zip"
    assert keys.parse_key(key, "nightly", "main", "main") == (keys.GLOBALS, NOW)
    assert keys.is_globals_key(key, "nightly", "main")
    assert keys.parse_key(key, "nightly", "main", "other") is None  # another prefix
    assert keys.parse_key(keys.globals_folder("nightly", "main") + "notes.txt", "nightly", "main", "main") is None
    # A database really named "globals" or "(globals)" keeps its own folder.
    assert keys.object_key("nightly", "main", "globals", NOW, "main") == (
        "nightly/main/globals/main-globals-05h-06m-04d-03mes-2026y.zip")
    assert not keys.is_globals_key(keys.object_key("nightly", "main", keys.GLOBALS, NOW, "main"), "nightly", "main")


# --------------------------------------------------------------------------------------------------
# Planning


def test_globals_are_planned_only_when_enabled_and_after_the_databases() -> None:
    cfg = config.load(ENV)
    plan = pipeline.plan(cfg, now=NOW, source=source())
    assert [(j.connection.name, j.database, j.kind) for j in plan.jobs] == [
        ("main", "app", "database"), ("main", "shop", "database"), ("main", keys.GLOBALS, "globals"),
        ("other", "x", "database")]
    assert plan.jobs[2].key == "main/%globals/main-globals-05h-06m-04d-03mes-2026y.zip"

    off = config.load({**ENV, "PG_URLS": f"main|{URL}"})
    assert [j.kind for j in pipeline.plan(off, now=NOW, source=source()).jobs] == ["database", "database"]


def test_backup_globals_turns_it_on_for_every_connection_and_globals_false_off_for_one() -> None:
    cfg = config.load({**ENV, "BACKUP_GLOBALS": "true",
                       "PG_URLS": f"main|globals=false|{URL},other|{URL.replace('db.', 'db2.')}"})
    plan = pipeline.plan(cfg, now=NOW, source=source())
    assert [(j.connection.name, j.database) for j in plan.jobs] == [
        ("main", "app"), ("main", "shop"), ("other", "x"), ("other", keys.GLOBALS)]


def test_a_hand_off_naming_the_globals_plans_them_and_skips_nothing() -> None:
    """Lambda hands the jobs it had no time for to a new invocation by name: (globals) among them."""
    cfg = config.load(ENV)
    plan = pipeline.plan(cfg, connections=["main"], databases=["shop", keys.GLOBALS], now=NOW, source=source())
    assert [(j.database, j.kind) for j in plan.jobs] == [("shop", "database"), (keys.GLOBALS, "globals")]
    assert plan.skipped == []
    only_db = pipeline.plan(cfg, connections=["main"], databases=["shop"], now=NOW, source=source())
    assert [j.database for j in only_db.jobs] == ["shop"]


# --------------------------------------------------------------------------------------------------
# Running, listing, retention


def test_the_globals_object_is_written_retained_and_listed_like_a_database() -> None:
    cfg = config.load(ENV)
    store = MemoryStorage([BUCKET])
    src = source()
    src.globals["main"] = FakeDatabase(keys.GLOBALS, b"CREATE ROLE app;\nCREATE ROLE grp;\n",
                                       note="role passwords left out")
    old = keys.globals_key("", "main", datetime(2020, 1, 1, 3, 0), "main")
    store.put(BUCKET, old, b"old")
    lookalike = "main/%25globals/main-%25globals-03h-00m-01d-01mes-2020y.zip"  # a database named %globals
    store.put(BUCKET, lookalike, b"db")

    summary = handler_core.handle({"connection": "main"}, config=cfg, edge=edge(store, src))

    [glob] = [r for r in summary["results"] if r["kind"] == "globals"]
    assert (glob["database"], glob["status"], glob["note"]) == (keys.GLOBALS, "ok", "role passwords left out")
    assert [r["note"] for r in summary["results"] if r["kind"] == "database"] == [None, None]
    assert [e for e in src.events if e.startswith("dump")] == ["dump main/app", "dump main/shop",
                                                                "dump main/(globals)"]
    assert glob["retention"]["deleted"] == [{"key": old, "reasons": glob["retention"]["deleted"][0]["reasons"],
                                             "done": True}]
    assert lookalike in store.objects[BUCKET]  # another folder's backup: never the globals' retention
    body = b"".join(iter_member(io.BytesIO(store.objects[BUCKET][glob["key"]][0])))
    assert body == b"CREATE ROLE app;\nCREATE ROLE grp;\n"

    found = restore.find_backups(cfg, "main", storage=store)
    assert sorted((b.database, b.kind) for b in found) == [
        ("%globals", "database"), ("(globals)", "globals"), ("app", "database"), ("shop", "database")]
    [g] = restore.find_backups(cfg, "main", globals_only=True, storage=store)
    assert g.key == glob["key"] and g.as_dict()["kind"] == "globals"
    assert restore.select_backup(cfg, "main", globals_only=True, storage=store).key == glob["key"]
    assert [b.database for b in restore.find_backups(cfg, "main", "app", storage=store)] == ["app"]


def test_a_failed_globals_dump_leaves_no_object_and_the_databases_stand() -> None:
    cfg = config.load({**ENV, "PG_URLS": f"main|globals=true|{URL}"})
    store = MemoryStorage([BUCKET])
    src = source()
    src.globals["main"] = FakeDatabase(keys.GLOBALS, b"CREATE ROLE a;\n", fail="permission denied for table x")
    with pytest.raises(handler_core.BackupFailedError) as failed:
        handler_core.handle({"connection": "main"}, config=cfg, edge=edge(store, src))
    summary = failed.value.summary
    assert [(r["database"], r["status"]) for r in summary["results"]] == [
        ("app", "ok"), ("shop", "ok"), (keys.GLOBALS, "failed")]
    assert "permission denied for table x" in summary["results"][2]["error"]
    assert not any(keys.is_globals_key(k, "", "main") for k in store.objects[BUCKET])
    assert store.pending == {}


def test_role_filter_leaves_existing_roles_as_they_are_and_names_conflicts() -> None:
    dump = (b'CREATE ROLE app;\nALTER ROLE app WITH LOGIN PASSWORD \'x\';\nCREATE ROLE "we""ird";\n'
            b'ALTER ROLE "we""ird" SET work_mem TO \'8MB\';\nCOMMENT ON ROLE app IS \'c\';\nCREATE ROLE postgres;\n'
            b'ALTER ROLE postgres WITH SUPERUSER;\nCREATE ROLE application;\nGRANT app TO application;\n')
    f = roles.RoleFilter({"app", 'we"ird', "postgres"}, "postgres", skip_existing=False)
    out = b"".join(f.feed(dump[i:i + 7]) for i in range(0, len(dump), 7)) + f.flush()
    assert out == b"\n" * 7 + b"CREATE ROLE application;\nGRANT app TO application;\n"
    assert (f.conflicts, f.skipped, f.created) == (["app", 'we"ird'], ["postgres"], ["application"])
    g = roles.RoleFilter({"app"}, "postgres", skip_existing=True)
    assert g.feed(dump) + g.flush() != dump and (g.conflicts, g.skipped) == ([], ["app"])


def _through(f: roles.RoleFilter, dump: bytes, size: int) -> bytes:
    return b"".join(f.feed(dump[i:i + size]) for i in range(0, len(dump), size)) + f.flush()


# A role may set its own settings, and a setting or a comment is a literal that may hold a line break.
SMUGGLED = (b"CREATE ROLE evil;\nALTER ROLE evil WITH LOGIN;\n"
            b"ALTER ROLE evil SET application_name TO 'x\nDROP ROLE victim; --';\n"
            b"COMMENT ON ROLE evil IS 'a\rCREATE ROLE \"x;\ny\";\n';\n"
            b'CREATE ROLE "two\nlines";\nALTER ROLE "two\nlines" WITH NOLOGIN;\nGRANT grp TO evil;\n')


@pytest.mark.parametrize("size", [1, 2, 7, 1 << 20])
def test_role_filter_drops_a_skipped_roles_statements_whole_never_a_line_of_them(size: int) -> None:
    """Dropping only the first line of a setting sent its second (``DROP ROLE victim``) as SQL of its
    own, run by the restoring superuser: statements end at a ; outside quotes, not at line ends."""
    f = roles.RoleFilter({"evil", "two\nlines"}, "postgres", skip_existing=True)
    out = _through(f, SMUGGLED, size)
    assert out == b"\n" * 11 + b"GRANT grp TO evil;\n"  # GRANT stays on line 12
    assert (f.skipped, f.conflicts, f.created) == (["evil", "two\nlines"], [], [])
    g = roles.RoleFilter(set(), "postgres", skip_existing=False)
    assert _through(g, SMUGGLED, size) == SMUGGLED and g.created == ["evil", "two\nlines"]


REFUSED_GLOBALS = {  # id -> (dump, the line named)
    "commit": (b"CREATE ROLE a;\nCOMMIT;\nCREATE ROLE b;\n", 2),
    "end-lower-case": (b"CREATE ROLE a;\n\nend ;\n", 3),
    "last-without-semicolon": (b"CREATE ROLE a;\n-- c\ncommit\n", 3),
    "two-on-a-line": (b"SET x = 'a;b'; COMMIT;\n", 1),
    "create-database": (b"CREATE DATABASE x;\n", 1),
    "drop-role": (b"CREATE ROLE a;\nDROP ROLE postgres;\n", 2),
    "select": (b"SELECT pg_terminate_backend(1);\n", 1),
    "strings-off": (b"SET standard_conforming_strings = off;\nCOMMENT ON ROLE a IS 'x\\'; COMMIT; --';\n", 1),
    "escape-string": (b"COMMENT ON ROLE a IS E'\\''; COMMIT; SELECT 'x';\n", 1),
    "dollar-quotes": (b"CREATE ROLE a;\nCOMMENT ON ROLE a IS $$x;\nCOMMIT;$$;\n", 2),
    "block-comment": (b"/* ; */ CREATE ROLE a;\n", 1),
    "meta-command": (b"CREATE ROLE a; \\! id\n", 1),
}


@pytest.mark.parametrize(("dump", "line"), REFUSED_GLOBALS.values(), ids=REFUSED_GLOBALS.keys())
@pytest.mark.parametrize("size", [1, 3, 1 << 20])
def test_role_filter_refuses_what_pg_dumpall_never_writes_before_sending_it(dump: bytes, line: int,
                                                                             size: int) -> None:
    """A COMMIT would commit what came before and run the rest outside the restore's one transaction
    (and past verify's ROLLBACK); the refusal comes before the statement is sent."""
    f = roles.RoleFilter(set(), "postgres", skip_existing=False)
    sent: list[bytes] = []
    with pytest.raises(roles.UnexpectedStatementError) as err:
        for i in range(0, len(dump), size):
            sent.append(f.feed(dump[i:i + size]))
        sent.append(f.flush())
    assert err.value.line == line
    assert not re.search(rb"(?i)commit|drop|database|select|\\!", b"".join(sent))


def test_role_filter_passes_a_genuine_dump_as_it_is() -> None:
    dump = (b"--\n-- PostgreSQL database cluster dump\n--\n\n\nSET default_transaction_read_only = off;\n\n"
            b"SET client_encoding = 'UTF8';\nSET standard_conforming_strings = on;\n\n--\n-- Roles\n--\n\n"
            b"CREATE ROLE app;\nALTER ROLE app WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:a$b:c';\n"
            b'CREATE ROLE "w\xc3\xa9ird ""role"";";\nCOMMENT ON ROLE app IS E\'back\\\\slash \'\' ;\';\n'
            b"GRANT grp TO app WITH INHERIT TRUE GRANTED BY postgres;\n"
            b"ALTER ROLE app SET search_path TO 'a', '\"b c\"';\n"
            b"\n\n--\n-- PostgreSQL database cluster dump complete\n--\n\n")
    for size in (1, 4, 1 << 20):
        f = roles.RoleFilter(set(), "postgres", skip_existing=False)
        assert _through(f, dump, size) == dump
        assert f.created == ["app", 'wéird "role";']
