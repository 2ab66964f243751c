"""Many databases on one connection: several at once (DATABASE_CONCURRENCY), each with its own upload,
integrity and retention; one listing per connection folder instead of requests per database."""

from __future__ import annotations

import io
import itertools
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from pgbkp import config, cpus, handler_core, keys, pipeline, progress
from pgbkp.config import Config
from pgbkp.storage import ObjectExistsError
from pgbkp.storage.memory import MemoryStorage
from pgbkp.storage.s3 import S3Storage
from tests.fakes import FakeDatabase, FakeDumpSource, FakeLambdaContext
from tests.helpers import make_bucket, s3_client
from tests.s3proxy import S3Proxy
from tests.servers import S3Server

BUCKET = "bkt"
ENV = {"PG_URLS": "main|postgres://u@db.invalid/postgres", "S3_BUCKET": BUCKET, "TIMEZONE": "UTC",
       "COMPRESSION_THREADS": "1", "RETENTION_DAYS": "1"}
#: Generous: only turns a hang (the behaviour under test missing) into a failure; never reached when it works.
HANG = 30.0


def cfg_with(**extra: str) -> Config:
    return config.load({**ENV, **extra})


def old_backup(store: MemoryStorage, cfg: Config, database: str, year: int) -> str:
    conn = cfg.connections[0]
    key = keys.object_key(cfg.global_prefix, conn.base_dir, database, datetime(year, 1, 1, 3, 0), conn.prefix)
    store.put(BUCKET, key, b"old")
    return key


def run(cfg: Config, source: FakeDumpSource, store: Any, **kwargs: Any) -> pipeline.RunResult:
    the_plan = pipeline.plan(cfg, source=source)
    return pipeline.run(cfg, the_plan, storage_for=lambda conn: store, source=source, **kwargs)


def most_dumps_open(events: list[str]) -> int:
    """The most dumps open at once, from the fake source's ordered events."""
    open_now = peak = 0
    for e in events:
        if e.startswith("dump "):
            open_now += 1
            peak = max(peak, open_now)
        elif e.startswith("closed "):
            open_now -= 1
    return peak


class AllAtOnce:
    """A fake dump hook that holds the first ``n`` dumps after their first chunk until all ``n`` are
    under way: proof that ``n`` run at once (run one after another, they would wait forever)."""

    def __init__(self, n: int, then: Any = None) -> None:
        self.barrier = threading.Barrier(n, action=then, timeout=HANG)
        self.n, self.seen = n, 0
        self.lock = threading.Lock()

    def __call__(self, where: str, reads: int) -> None:
        if reads != 1:
            return
        with self.lock:
            self.seen += 1
            mine = self.seen <= self.n
        if mine:
            self.barrier.wait()


# --------------------------------------------------------------------------------------------------
# Several at once


@pytest.mark.parametrize("n", [2, 3])
def test_n_databases_run_at_once_and_every_result_is_there(n: int) -> None:
    names = [f"db{i}" for i in range(7)]
    source = FakeDumpSource({"main": [FakeDatabase(d, f"-- {d}\n".encode() * 5) for d in names]},
                            on_read=AllAtOnce(n))
    store = MemoryStorage([BUCKET])
    out = run(cfg_with(DATABASE_CONCURRENCY=str(n)), source, store)
    assert [(r.database, r.status) for r in out.results] == [(d, "ok") for d in names]  # in plan order
    assert most_dumps_open(source.events) == n  # n at once, never more
    assert sorted(store.objects[BUCKET]) == sorted(r.key for r in out.results)
    assert store.pending == {}


def test_one_failure_does_not_stop_the_others_nor_its_retention_run() -> None:
    """Each database's retention runs only after its own verified upload: the failed one keeps its old
    backup, the others lose theirs."""
    cfg = cfg_with(DATABASE_CONCURRENCY="2")
    source = FakeDumpSource({"main": [FakeDatabase("a"), FakeDatabase("b", fail="server closed the connection"),
                                      FakeDatabase("c")]}, on_read=AllAtOnce(2))
    store = MemoryStorage([BUCKET])
    old = {d: old_backup(store, cfg, d, 2020) for d in "abc"}
    out = run(cfg, source, store)
    assert [(r.database, r.status) for r in out.results] == [("a", "ok"), ("b", "failed"), ("c", "ok")]
    assert "server closed the connection" in (out.results[1].error or "")
    assert old["b"] in store.objects[BUCKET] and old["a"] not in store.objects[BUCKET]
    assert old["c"] not in store.objects[BUCKET]
    assert [a.key for a in out.results[0].retention if a.action == "delete" and a.done] == [old["a"]]
    assert out.results[1].retention == []
    assert store.pending == {}


def test_a_stop_mid_flight_aborts_every_upload_in_flight() -> None:
    stop = threading.Event()
    source = FakeDumpSource({"main": [FakeDatabase(f"db{i}", b"x" * 40) for i in range(5)]},
                            on_read=AllAtOnce(3, then=stop.set))  # all three have a chunk in: stop
    store = MemoryStorage([BUCKET])
    out = run(cfg_with(DATABASE_CONCURRENCY="3"), source, store, should_stop=stop.is_set)
    assert [(r.database, r.status) for r in out.results] == [(f"db{i}", "failed") for i in range(3)]
    for r in out.results:
        assert r.error == f"backup s3://{BUCKET}/{r.key}: stopped before the dump finished"
    assert [j.database for j in out.deferred] == ["db3", "db4"]
    assert store.pending == {} and store.objects[BUCKET] == {}


class StopsSeen(FakeDumpSource):
    """A fake source that keeps each dump's ``stop`` (what the run asks the dump to poll)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stops: dict[str, Any] = {}

    def dump(self, connection: Any, database: str, *, stop: Any, lock_wait_timeout: int, **_: Any) -> Any:
        self.stops[f"{connection.name}/{database}"] = stop
        return super().dump(connection, database, stop=stop, lock_wait_timeout=lock_wait_timeout)


def test_ctrl_c_in_the_run_stops_the_databases_in_flight() -> None:
    """KeyboardInterrupt reaches the thread that runs the pool: the jobs in flight stop and abort."""
    source = StopsSeen({"main": [FakeDatabase(f"db{i}", b"x" * 40) for i in range(3)]})
    store = MemoryStorage([BUCKET])
    both_in = threading.Barrier(3, timeout=HANG)  # db0, db1 and the run's thread
    told = threading.Event()

    def hook(where: str, reads: int) -> None:
        if reads == 1:
            both_in.wait()
            while not source.stops[where]():  # until the run tells its dumps to stop
                told.wait(0.01)

    source.on_read = hook

    def before_job(job: pipeline.Job, rest: list[pipeline.Job]) -> bool:
        if job.database == "db2":  # db0 and db1 are in flight, each a chunk in: Ctrl-C now
            both_in.wait()
            raise KeyboardInterrupt
        return True

    with pytest.raises(KeyboardInterrupt):
        run(cfg_with(DATABASE_CONCURRENCY="3"), source, store, before_job=before_job)
    assert store.pending == {} and store.objects[BUCKET] == {}
    assert "dump main/db2" not in source.events
    assert source.events.count("closed main/db0") == source.events.count("closed main/db1") == 1


def test_deflate_threads_are_shared_not_multiplied() -> None:
    assert pipeline._threads_per_job(cfg_with(COMPRESSION_THREADS="16"), 4) == 4
    assert pipeline._threads_per_job(cfg_with(COMPRESSION_THREADS="9"), 2) == 4
    assert pipeline._threads_per_job(cfg_with(COMPRESSION_THREADS="2"), 2) == 2  # never inline, if not asked
    assert pipeline._threads_per_job(cfg_with(COMPRESSION_THREADS="1"), 3) == 1
    assert pipeline._threads_per_job(cfg_with(COMPRESSION_THREADS="4"), 1) is None  # the writer's own default


def test_the_default_concurrency_follows_cpus_and_memory() -> None:
    mb = 1 << 20
    assert cpus.database_concurrency(cpus=1, memory=4096 * mb) == 1
    assert cpus.database_concurrency(cpus=2, memory=4096 * mb) == 2
    assert cpus.database_concurrency(cpus=8, memory=4096 * mb) == cpus.MAX_DEFAULT_DATABASES == 2
    assert cpus.database_concurrency(cpus=2, memory=256 * mb) == 1  # a 256 MB function: one at a time
    assert cpus.database_concurrency(cpus=2, memory=128 * mb) == 1
    assert cpus.available_memory({"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024"}) == 1024 * mb
    assert pipeline.database_concurrency(cfg_with(DATABASE_CONCURRENCY="3")) == 3


# --------------------------------------------------------------------------------------------------
# Logs, progress and the Lambda budget under interleaving


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    loggers = [logging.getLogger(n) for n in ("pgbkp.pipeline", "pgbkp.progress")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    yield handler
    for lg, level in zip(loggers, levels, strict=True):
        lg.removeHandler(handler)
        lg.setLevel(level)


def test_log_and_progress_lines_name_their_own_database_when_interleaved(records: Records) -> None:
    names = ["alpha", "beta", "gamma"]
    turns = threading.Barrier(3, timeout=HANG)

    def in_step(where: str, reads: int) -> None:
        if reads <= 3:  # three chunks each, read in lockstep: their lines interleave
            turns.wait()

    cfg = cfg_with(DATABASE_CONCURRENCY="3")
    source = FakeDumpSource({"main": [FakeDatabase(d, b"y" * 24) for d in names]}, on_read=in_step)
    store = MemoryStorage([BUCKET])
    for d in names:
        old_backup(store, cfg, d, 2021)
    ticks = itertools.count(1)
    watcher = progress.LogObserver(interval=0.0, clock=lambda: float(next(ticks)))
    out = run(cfg, source, store, observer=watcher)
    assert [r.status for r in out.results] == ["ok"] * 3
    lines = [(getattr(r, "database", None), r.getMessage()) for r in records.records]
    progress_lines = [(db, msg) for db, msg in lines if msg.startswith("progress ")]
    assert len(progress_lines) >= 3 * 3
    by_db: Counter[str] = Counter()
    for db, msg in lines:
        assert db in names, msg  # every line carries its database
        others = [o for o in names if o != db]
        assert db in msg and not any(o in msg for o in others), (db, msg)
        by_db[db] += 1
    assert set(by_db) == set(names)
    # Interleaved for real: read in lockstep, the progress lines go round the databases.
    order = [db for db, _ in progress_lines]
    assert sum(a != b for a, b in itertools.pairwise(order)) > len(names) - 1


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_pair_per_database_in_flight_on_a_terminal() -> None:
    bars = progress.make_observer(Tty())
    assert isinstance(bars, progress.BarObserver)
    cfg = cfg_with()
    conn = cfg.connections[0]
    jobs = [pipeline.Job(conn, d, BUCKET, f"main/{d}/{d}.zip", datetime(2026, 1, 1)) for d in ("a", "b", "c")]
    bars.started(jobs[0])
    bars.started(jobs[1])
    positions = lambda job: [abs(b.pos) for b in bars._bars[id(job)]]  # noqa: E731 - tqdm keeps -position
    assert positions(jobs[0]) == [0, 1] and positions(jobs[1]) == [2, 3]
    bars.finished(jobs[0], pipeline.DatabaseResult("main", "a", status="ok"))
    bars.started(jobs[2])  # takes the freed lines
    assert positions(jobs[2]) == [0, 1]
    for job in jobs[1:]:
        bars.finished(job, pipeline.DatabaseResult("main", job.database, status="ok"))


def test_the_budget_counts_the_databases_in_flight() -> None:
    cfg = cfg_with()
    conn = cfg.connections[0]
    mb = 1_000_000
    limits = handler_core.TimeLimits(safety_margin=60, hard_margin=20, mb_per_second=1.0)
    big = pipeline.Job(conn, "big", BUCKET, "main/big/k.zip", datetime(2026, 1, 1), size_estimate=300 * mb)
    small = pipeline.Job(conn, "small", BUCKET, "main/small/k.zip", datetime(2026, 1, 1), size_estimate=100 * mb)
    context = FakeLambdaContext(remaining_ms=400_000)  # 400 s: small alone needs 160, with big in flight 460
    budget = handler_core._Budget(context, limits)
    assert budget.before_job(big, [big, small])
    budget.started(big)
    assert not budget.before_job(small, [small])  # big's 300 s still count
    budget.finished(big, pipeline.DatabaseResult("main", "big", status="ok"))
    assert budget.before_job(small, [small])
    budget.started(small)
    budget.started(big)
    context.remaining_ms = 10_000  # under the hard margin: both in flight are named as stopped
    assert budget.should_stop()
    assert budget.tripped is not None and sorted(j.database for j in budget.tripped[0]) == ["big", "small"]


# --------------------------------------------------------------------------------------------------
# Requests per database, counted on the real S3 server


def s3_env(s3: S3Server, proxy: S3Proxy, bucket: str, **extra: str) -> dict[str, str]:
    return {**s3.env(), "S3_ENDPOINT": proxy.endpoint, "PG_URLS": f"main|bucket={bucket}|postgres://u@db.invalid/p",
            "TIMEZONE": "UTC", "COMPRESSION_THREADS": "1", "DATABASE_CONCURRENCY": "2", **extra}


def twenty(prefix: str = "t") -> FakeDumpSource:
    return FakeDumpSource({"main": [FakeDatabase(f"{prefix}{i:02}", b"-- small dump\n" * 50) for i in range(20)]},
                          chunk=1 << 20)


def seed_old(s3: S3Server, cfg: Config, bucket: str, databases: list[str], years: range) -> list[str]:
    client, conn = s3_client(s3), cfg.connections[0]
    made = [keys.object_key("", conn.base_dir, d, datetime(y, 1, 1, 3, 0), conn.prefix)
            for d in databases for y in years]
    for key in made:
        client.put_object(Bucket=bucket, Key=key, Body=b"old")
    return made


def counts(proxy: S3Proxy) -> dict[str, int]:
    return dict(Counter(r.operation for r in proxy.requests))


def test_twenty_databases_cost_one_request_each_plus_three(s3: S3Server) -> None:
    bucket = make_bucket(s3)
    source = twenty()
    with S3Proxy(s3.endpoint) as proxy:
        cfg = config.load(s3_env(s3, proxy, bucket))
        out = run(cfg, source, S3Storage(cfg.connections[0].s3))
        seen = counts(proxy)
    assert [r.status for r in out.results] == ["ok"] * 20
    # One HeadBucket, one listing of the connection's folder, one of its pending uploads; then a
    # PutObject per database: no HeadObject before (the listing said the key is free) nor after.
    assert seen == {"HeadBucket": 1, "ListObjectsV2": 1, "ListMultipartUploads": 1, "PutObject": 20}
    assert sum(seen.values()) / 20 <= 1.2


def test_retention_over_twenty_databases_lists_once_and_deletes_in_one_batch(s3: S3Server) -> None:
    bucket = make_bucket(s3)
    source = twenty("r")
    with S3Proxy(s3.endpoint) as proxy:
        cfg = config.load(s3_env(s3, proxy, bucket, RETENTION_DAYS="1"))
        old = seed_old(s3, cfg, bucket, [f"r{i:02}" for i in range(20)], range(2019, 2023))  # 4 each, 80
        proxy.clear()
        out = run(cfg, source, S3Storage(cfg.connections[0].s3))
        seen = counts(proxy)
        deletes = proxy.ops("DeleteObjects")
    assert [r.status for r in out.results] == ["ok"] * 20
    assert all(len([a for a in r.retention if a.action == "delete" and a.done]) == 4 for r in out.results)
    assert seen == {"HeadBucket": 1, "ListObjectsV2": 1, "ListMultipartUploads": 1, "PutObject": 20,
                    "GetObjectLockConfiguration": 1, "DeleteObjects": 1}
    assert sum(seen.values()) <= 1.2 * 20 + 1  # 1.2 per database + one DeleteObjects per 1000 deletions
    assert deletes[0].body.count(b"<Key>") == len(old) == 80
    left = {o["Key"] for o in s3_client(s3).list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert left == {r.key for r in out.results}


def test_a_dry_run_lists_once_for_all_databases(s3: S3Server) -> None:
    bucket = make_bucket(s3)
    source = twenty("d")
    with S3Proxy(s3.endpoint) as proxy:
        cfg = config.load(s3_env(s3, proxy, bucket, RETENTION_DAYS="1"))
        seed_old(s3, cfg, bucket, [f"d{i:02}" for i in range(20)], range(2021, 2023))
        proxy.clear()
        out = run(cfg, source, S3Storage(cfg.connections[0].s3), dry_run=True)
        seen = counts(proxy)
    assert [r.status for r in out.results] == ["dry-run"] * 20
    assert all(len([a for a in r.retention if a.action == "delete" and not a.done]) == 2 for r in out.results)
    assert seen == {"HeadBucket": 1, "ListObjectsV2": 1, "GetObjectLockConfiguration": 1}


def test_a_key_the_listing_shows_is_still_skipped_and_kept(s3: S3Server) -> None:
    """Same minute, second run: the listing has the key, so the upload heads it and skips the database."""
    bucket = make_bucket(s3)
    source = twenty("s")
    with S3Proxy(s3.endpoint) as proxy:
        cfg = config.load(s3_env(s3, proxy, bucket))
        the_plan = pipeline.plan(cfg, source=source)
        taken = the_plan.jobs[3]
        s3_client(s3).put_object(Bucket=bucket, Key=taken.key, Body=b"the earlier run's backup")
        store = S3Storage(cfg.connections[0].s3)
        out = pipeline.run(cfg, the_plan, storage_for=lambda conn: store, source=source)
        seen = counts(proxy)
    assert [s.database for s in out.skipped] == [taken.database]
    assert len(out.results) == 19 and all(r.status == "ok" for r in out.results)
    assert s3_client(s3).get_object(Bucket=bucket, Key=taken.key)["Body"].read() == b"the earlier run's backup"
    assert seen["HeadObject"] == 1 and seen["PutObject"] == 19


def test_without_the_head_a_key_taken_after_the_listing_is_still_never_replaced(s3: S3Server) -> None:
    """``listed=True`` sends no HeadObject; the PutObject's If-None-Match refuses the taken key, and the
    object there is kept (the database is then reported skipped, as with the head)."""
    bucket = make_bucket(s3)
    with S3Proxy(s3.endpoint) as proxy:
        cfg = config.load(s3_env(s3, proxy, bucket))
        store = S3Storage(cfg.connections[0].s3)
        upload = store.upload(bucket, "main/x/k.zip", listed=True)
        s3_client(s3).put_object(Bucket=bucket, Key="main/x/k.zip", Body=b"landed first")
        upload.write(b"ours")
        with pytest.raises(ObjectExistsError):
            upload.commit()
        sent = [r.operation for r in proxy.requests]
    assert s3_client(s3).get_object(Bucket=bucket, Key="main/x/k.zip")["Body"].read() == b"landed first"
    assert sent == ["PutObject", "HeadObject"]  # no head before; after the refusal, whose object it is


class DeleteLog(MemoryStorage):
    def __init__(self) -> None:
        super().__init__([BUCKET])
        self.deletes: list[list[str]] = []

    def delete(self, bucket: str, keys: Any) -> None:
        self.deletes.append(list(keys))
        super().delete(bucket, keys)


def test_deletions_go_in_batches_across_databases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "DELETE_BATCH", 2)  # S3's 1,000, made small
    cfg = cfg_with(DATABASE_CONCURRENCY="1")
    source = FakeDumpSource({"main": [FakeDatabase(d) for d in "abc"]})
    store = DeleteLog()
    old = [old_backup(store, cfg, d, 2020) for d in "abc"]
    out = run(cfg, source, store)
    assert store.deletes == [old[:2], old[2:]]  # a full batch as soon as it is full, the rest at the end
    assert all(a.done for r in out.results for a in r.retention if a.action == "delete")


def test_a_failed_batch_fails_the_retention_of_each_database_in_it() -> None:
    cfg = cfg_with(DATABASE_CONCURRENCY="2")
    source = FakeDumpSource({"main": [FakeDatabase(d) for d in "ab"]})
    store = MemoryStorage([BUCKET])
    old = [old_backup(store, cfg, d, 2020) for d in "ab"]
    store.legal_holds.add((BUCKET, old[1]))  # the store refuses it (the bucket says it has no lock)
    out = run(cfg, source, store)
    assert [r.status for r in out.results] == ["failed", "failed"]
    for r in out.results:
        assert r.error is not None and r.error.startswith(f"retention: delete s3://{BUCKET}/{old[1]}: AccessDenied")
        assert r.key in store.objects[BUCKET]  # the backups themselves stand
    assert not any(a.done for r in out.results for a in r.retention)


def test_available_memory_reads_the_cgroup_limit(tmp_path: Any) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/pgbkp\n")
    (tmp_path / "pgbkp").mkdir()
    (tmp_path / "pgbkp" / "memory.max").write_text("max\n")
    (tmp_path / "memory.max").write_text(f"{512 << 20}\n")  # a parent's limit binds us too
    assert cpus.available_memory({}, cgroup_root=tmp_path, proc_cgroup=proc) == 512 << 20
    (tmp_path / "memory.max").write_text("max\n")
    unbounded = cpus.available_memory({}, cgroup_root=tmp_path, proc_cgroup=proc)
    assert unbounded > 512 << 20  # the machine's RAM
