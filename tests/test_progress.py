"""Progress: periodic plain log lines without a terminal, tqdm bars with one, never control characters in logs."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime

import pytest

from pgbkp import config, pipeline, progress
from pgbkp.logs import JsonFormatter
from pgbkp.storage.s3 import S3Storage
from tests.helpers import make_bucket, run_cli, unique_db
from tests.servers import PgCluster, S3Server

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but \t and \n


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """What the pgbkp.progress logger writes, as JSON lines (the non-terminal format)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("pgbkp.progress")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield out
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def a_job(size_estimate: int = 50_000_000) -> pipeline.Job:
    cfg = config.load({"PG_URLS": "main|bucket=bkt|postgres://u:secretpw@db.example:5432/postgres", "TIMEZONE": "UTC"})
    when = datetime(2025, 5, 1, 3, 0)
    return pipeline.Job(cfg.connections[0], "shop", "bkt", "main/shop/main-shop-03h-00m-01d-05mes-2025y.zip", when,
                        size_estimate)


def test_make_observer_picks_bars_on_a_terminal_only() -> None:
    assert isinstance(progress.make_observer(Tty()), progress.BarObserver)
    assert isinstance(progress.make_observer(io.StringIO()), progress.LogObserver)


def test_log_lines_at_most_once_per_interval_with_bytes_and_rate(captured: io.StringIO) -> None:
    clock = FakeClock()
    obs = progress.LogObserver(interval=30, clock=clock)
    job = a_job()
    obs.started(job)
    for _ in range(100):  # 100 s at 1 MB/s dumped, 0.5 MB/s uploaded, reported every second
        clock.now += 1
        obs.dumped(job, 1_000_000)
        obs.uploaded(job, 500_000)
    obs.finished(job, pipeline.DatabaseResult("main", "shop", status="ok"))
    obs.dumped(job, 1)  # after finished: ignored
    lines = [line for line in captured.getvalue().splitlines() if line]
    assert not CONTROL.search(captured.getvalue())
    docs = [json.loads(line) for line in lines]
    assert docs[0]["message"] == ("backing up shop to s3://bkt/main/shop/main-shop-03h-00m-01d-05mes-2025y.zip "
                                  "(about 50.0 MB on disk)")
    progress_lines = [d["message"] for d in docs[1:]]
    assert len(progress_lines) == 3  # at 30 s, 60 s and 90 s: never more often than the interval
    assert progress_lines[0] == (
        "progress shop: dumped 30000000 bytes (30.0 MB of about 50.0 MB, an estimate) at 1.0 MB/s, "
        "uploaded 14500000 bytes (14.5 MB) at 0.5 MB/s, 30s elapsed")
    assert progress_lines[2].startswith("progress shop: dumped 90000000 bytes (90.0 MB of about 50.0 MB")
    assert all(d["database"] == "shop" and d["connection"] == "main" for d in docs)


def test_rate_is_since_the_previous_line(captured: io.StringIO) -> None:
    clock = FakeClock()
    obs = progress.LogObserver(interval=10, clock=clock)
    job = a_job(size_estimate=0)
    obs.started(job)
    clock.now += 10
    obs.dumped(job, 40_000_000)  # 4 MB/s
    clock.now += 20
    obs.dumped(job, 20_000_000)  # then 1 MB/s: a stall shows
    msgs = [m for m in captured.getvalue().splitlines() if "\"message\": \"progress " in m]
    assert "at 4.0 MB/s" in msgs[0] and "at 1.0 MB/s" in msgs[1]
    assert "estimate" not in msgs[0]  # no size known: no total claimed


def test_bars_say_the_total_is_an_estimate_and_end_at_the_real_size() -> None:
    out = Tty()
    obs = progress.make_observer(out)
    job = a_job(size_estimate=10_000_000)
    obs.started(job)
    for _ in range(6):
        obs.dumped(job, 1_000_000)
        obs.uploaded(job, 300_000)
    obs.finished(job, pipeline.DatabaseResult("main", "shop", status="ok"))
    text = out.getvalue()
    assert "Dump shop (total ~ database size, an estimate)" in text
    assert "Upload main-shop-03h-00m-01d-05mes-2025y.zip" in text
    assert "6.00M/6.00M" in text or "6.0M/6.0M" in text  # the bar ends at what was really dumped
    assert "1.80M" in text


def test_real_backup_logs_progress_lines_without_control_characters(
        pg: PgCluster, s3: S3Server, captured: io.StringIO) -> None:
    db = unique_db(pg, "progress")
    try:
        pg.psql("CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 60000) g", db)
        bucket = make_bucket(s3)
        cfg = config.load({**s3.env(), "PG_URLS": f"main|bucket={bucket}|{pg.url()}", "TIMEZONE": "UTC"})
        obs = progress.LogObserver(interval=0.0)  # a line for every chunk and part
        result = pipeline.run(cfg, pipeline.plan(cfg, databases=[db]), observer=obs,
                              storage_for=pipeline.StorageCache(S3Storage))
        assert result.ok, result.results
        text = captured.getvalue()
        assert not CONTROL.search(text)
        lines = [line for line in text.splitlines() if "progress " + db in line]
        assert lines, text
        raw = result.results[0].raw_bytes
        assert f"dumped {raw} bytes" in lines[-1] or any(f"dumped {raw} bytes" in line for line in lines)
        assert any(f"uploaded {result.results[0].object_bytes} bytes" in line for line in lines)
        assert all(re.search(r"at \d+\.\d MB/s", line) for line in lines)
    finally:
        pg.drop_database(db)


def test_cli_without_terminal_writes_no_bar(pg: PgCluster, s3: S3Server) -> None:
    db = unique_db(pg, "nobar")
    try:
        bucket = make_bucket(s3)
        out = run_cli(["backup", "-d", db], {**s3.env(), "PG_URLS": f"main|bucket={bucket}|{pg.url()}"})
        assert out.returncode == 0, out.stderr
        assert f"backing up {db}" in out.stderr
        assert not CONTROL.search(out.stdout + out.stderr)
        assert "it/s" not in out.stderr and "%|" not in out.stderr
    finally:
        pg.drop_database(db)
