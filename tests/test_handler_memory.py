"""The one path (handler_core.handle, and serve's runner around it) on MemoryStorage with a fake dump.

No PostgreSQL, no S3: the edge passes the store and the dump source (tests/fakes.py), so the order of a
run, Lambda's time budget and hand-off, a stop request mid-dump and retention run in milliseconds. The
same behaviours on real servers are in test_one_path.py, test_lambda_handler.py and test_runner.py.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pytest

from pgbkp import config, handler_core, keys, pipeline, runner
from pgbkp.archive import iter_member
from pgbkp.config import Connection, S3Settings
from pgbkp.storage import Storage
from pgbkp.storage.memory import MemoryStorage
from tests.fakes import FakeDatabase, FakeDumpSource, FakeLambdaContext

BUCKET = "bkt"
ENV = {"PG_URLS": "main|postgres://u@db.invalid/postgres", "S3_BUCKET": BUCKET, "TIMEZONE": "UTC",
       "COMPRESSION_THREADS": "1", "RETENTION_DAYS": "1", "RETENTION_WEEKS": "0", "RETENTION_MONTHS": "0",
       "DATABASE_CONCURRENCY": "1"}  # the order of events is the point of most tests here


class RecordingStorage(MemoryStorage):
    """MemoryStorage that writes its uploads and deletions into the fake source's event list."""

    def __init__(self, events: list[str]) -> None:
        super().__init__([BUCKET])
        self.events = events

    def upload(self, bucket: str, key: str, **kwargs: Any) -> Any:
        self.events.append(f"upload {key.rsplit('/', 2)[-2]}")
        return super().upload(bucket, key, **kwargs)

    def delete(self, bucket: str, keys: Sequence[str]) -> None:
        self.events.append(f"delete {', '.join(keys)}")
        super().delete(bucket, keys)


def old_backup(store: MemoryStorage, database: str, year: int) -> str:
    """A backup file of ``database`` from New Year's Day of ``year``, as a run then would have named it."""
    cfg = config.load(ENV)
    conn = cfg.connections[0]
    key = keys.object_key(cfg.global_prefix, conn.base_dir, database, datetime(year, 1, 1, 3, 0), conn.prefix)
    store.put(BUCKET, key, b"old")
    return key


def edge_for(store: Storage, source: FakeDumpSource, **kwargs: Any) -> handler_core.Edge:
    return handler_core.Edge(storage_for=lambda conn: store, source=source, **kwargs)


def unzipped(store: MemoryStorage, key: str) -> bytes:
    return b"".join(iter_member(io.BytesIO(store.objects[BUCKET][key][0])))


def test_each_database_is_dumped_uploaded_then_retained_before_the_next() -> None:
    source = FakeDumpSource({"main": [FakeDatabase("shop", b"-- shop dump\n" * 3), FakeDatabase("app", b"-- app\n")]})
    store = RecordingStorage(source.events)
    app_old, shop_old = old_backup(store, "app", 2020), old_backup(store, "shop", 2021)
    stray = "main/app/notes.txt"  # not a backup name: retention never touches it
    store.put(BUCKET, stray, b"mine")

    summary = handler_core.handle({"connection": "main"}, config=config.load(ENV), edge=edge_for(store, source))

    app, shop = summary["results"]
    assert [(r["database"], r["status"]) for r in (app, shop)] == [("app", "ok"), ("shop", "ok")]
    assert [e for e in source.events if not e.startswith("read ")] == [
        "list main",
        "upload app", "dump main/app", "closed main/app",
        "upload shop", "dump main/shop", "closed main/shop",
        f"delete {app_old}, {shop_old}",  # planned after each upload, sent in one batch
    ]
    assert source.events.count("read main/shop") == 10  # 39 bytes in 4-byte chunks
    assert [d["key"] for d in app["retention"]["deleted"]] == [app_old]
    assert [d["key"] for d in shop["retention"]["deleted"]] == [shop_old]
    assert sorted(store.objects[BUCKET]) == sorted([app["key"], shop["key"], stray])
    assert (unzipped(store, app["key"]), app["raw_bytes"]) == (b"-- app\n", 7)
    assert unzipped(store, shop["key"]) == b"-- shop dump\n" * 3
    assert store.pending == {}


def test_a_failed_dump_leaves_no_upload_and_runs_no_retention() -> None:
    source = FakeDumpSource({"main": [FakeDatabase("app", b"-- app\n"),
                                      FakeDatabase("shop", b"-- half a dump", fail="connection lost")]})
    store = MemoryStorage([BUCKET])
    app_old, shop_old = old_backup(store, "app", 2020), old_backup(store, "shop", 2020)

    with pytest.raises(handler_core.BackupFailedError) as err:
        handler_core.handle({"connection": "main"}, config=config.load(ENV), edge=edge_for(store, source))

    app, shop = err.value.summary["results"]
    assert (app["status"], shop["status"]) == ("ok", "failed")
    assert shop["error"] == "pg_dump 'shop': connection lost; the dump is incomplete"
    assert shop["raw_bytes"] == 14 and shop["retention"] == {"deleted": [], "kept": 0, "locked": []}
    assert sorted(store.objects[BUCKET]) == sorted([app["key"], shop_old])  # app's old one went, shop's stays
    assert app_old not in store.objects[BUCKET]
    assert store.pending == {}


def test_the_lambda_budget_hands_the_rest_to_a_new_invocation() -> None:
    context = FakeLambdaContext(remaining_ms=900_000)

    def clock(where: str, reads: int) -> None:
        if where == "main/a":
            context.remaining_ms = 100_000  # under TIME_SAFETY_MARGIN_SECONDS (120), over the hard margin (20)

    source = FakeDumpSource({"main": [FakeDatabase(name) for name in ("a", "b", "c")]}, on_read=clock)
    store = MemoryStorage([BUCKET])
    sent: list[dict[str, Any]] = []

    summary = handler_core.handle({"connection": "main"}, context, config=config.load(ENV),
                                  edge=edge_for(store, source, invoker=sent.append))

    assert [(r["database"], r["status"]) for r in summary["results"]] == [("a", "ok")]
    assert sent == summary["handed_off"] == [{"connection": "main", "databases": ["b", "c"]}]
    assert [e for e in source.events if e.startswith("dump ")] == ["dump main/a"]
    assert [k.split("/")[1] for k in store.objects[BUCKET]] == ["a"]


def test_a_stop_request_mid_dump_aborts_it_and_starts_nothing_else() -> None:
    """pgbkp serve's shutdown (grace 0) through the runner: the upload in flight is aborted, not left
    pending, and the next database never starts."""
    the_runner: runner.Runner

    def stop_at_second_chunk(where: str, reads: int) -> None:
        if (where, reads) == ("main/a", 2):
            the_runner.request_stop("test")

    source = FakeDumpSource({"main": [FakeDatabase("a", b"x" * 40), FakeDatabase("b")]}, on_read=stop_at_second_chunk)
    store = MemoryStorage([BUCKET])
    backup = functools.partial(runner.backup_with_handler, storage_for=lambda conn: store, source=source)
    the_runner = runner.Runner(backup=backup, schedule=None, grace=0)
    with pytest.MonkeyPatch.context() as env:
        for name, value in ENV.items():
            env.setenv(name, value)
        outcome = the_runner.run_once()

    a, b = outcome.results
    assert outcome.code == 1 and (a["status"], b["status"]) == ("failed", "failed")
    assert a["error"] == f"backup s3://{BUCKET}/{a['key']}: stopped before the dump finished"
    assert b["error"] == f"backup s3://{BUCKET}/{b['key']}: not started: the run was asked to stop"
    assert a["raw_bytes"] == 8  # two chunks of 4
    assert [e for e in source.events if not e.startswith("read ")] == ["list main", "dump main/a", "closed main/a"]
    assert store.objects[BUCKET] == {} and store.pending == {}
    assert outcome.summary.splitlines()[0] == "2 database(s): 2 failed"


def test_connections_with_the_same_s3_settings_share_one_store() -> None:
    """The edges' StorageCache: one client per distinct settings for the whole run, not per connection."""
    env = {**ENV, "PG_URLS": "one|postgres://u@h1/db,two|postgres://u@h2/db,"
                             "three|endpoint=https://s3.example.net|postgres://u@h3/db"}
    source = FakeDumpSource({name: [FakeDatabase("app")] for name in ("one", "two", "three")})
    store = MemoryStorage([BUCKET])
    made: list[S3Settings] = []

    def factory(settings: S3Settings) -> Storage:
        made.append(settings)
        return store

    summary = handler_core.handle({}, config=config.load(env),
                                  edge=handler_core.Edge(storage_for=pipeline.StorageCache(factory), source=source))

    assert [(r["connection"], r["status"]) for r in summary["results"]] == [
        ("one", "ok"), ("two", "ok"), ("three", "ok")]
    assert [s.endpoint for s in made] == [None, "https://s3.example.net"]


def test_verify_reads_the_store_the_edge_passes() -> None:
    store = MemoryStorage([BUCKET])
    asked: list[Connection] = []

    def storage_for(conn: Connection) -> Storage:
        asked.append(conn)
        return store

    with pytest.raises(handler_core.BackupFailedError, match=r"^verify main: no backups found to verify$"):
        handler_core.handle({"action": "verify", "connection": "main"}, config=config.load(ENV),
                            edge=handler_core.Edge(storage_for=storage_for))
    assert [c.name for c in asked] == ["main"]
