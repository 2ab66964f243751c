"""pg_database_size() only where an estimate is used (issue 17): it reads every file of every database
(0.2 s for 200 databases), and only a Lambda time budget, a dry run's "on disk" column and a progress bar
on a terminal show or use the estimate. Everything else lists names only.

The real-server test plants a pg_database_size() of its own ahead of pg_catalog's on the listing
database's search_path: it records each call and answers 4242, so what the listing query calls is
counted exactly."""

from __future__ import annotations

import io
import uuid
from typing import Any

import pytest

from pgbkp import cli, config, handler_core, postgres, progress, runner
from pgbkp.storage.memory import MemoryStorage
from tests.fakes import FakeDatabase, FakeDumpSource, FakeLambdaContext
from tests.servers import PgCluster

BUCKET = "bkt"
ENV = {"PG_URLS": "main|postgres://u@db.invalid/postgres", "S3_BUCKET": BUCKET, "TIMEZONE": "UTC",
       "COMPRESSION_THREADS": "1"}
SPY = """
CREATE SCHEMA spy;
CREATE TABLE spy.calls (db oid);
CREATE FUNCTION spy.pg_database_size(db oid) RETURNS bigint LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO spy.calls VALUES (db); RETURN 4242; END $$;
"""


def test_the_listing_calls_pg_database_size_only_when_asked(pg: PgCluster) -> None:
    with pg.temporary_database(f"sizes_spy_{uuid.uuid4().hex[:8]}", SPY) as db:
        pg.psql(f'ALTER DATABASE "{db}" SET search_path = spy, pg_catalog')
        target = config.load({"PG_URLS": pg.url(db), "S3_BUCKET": BUCKET}).connections[0].pg

        server, found = postgres.list_databases(target)
        assert pg.psql("SELECT count(*) FROM spy.calls", db) == "0"
        assert {d.size for d in found} == {0}
        assert db in {d.name for d in found} and all(d.can_connect for d in found)  # still known without sizes
        assert server.version_num >= 100000

        _, measured = postgres.list_databases(target, sizes=True)
        assert pg.psql("SELECT count(*) FROM spy.calls", db) == str(len(measured))
        assert [(d.name, d.size) for d in measured] == [(d.name, 4242) for d in found]


def test_a_database_without_connect_is_still_named_without_sizes(pg: PgCluster) -> None:
    """CONNECT used to be read off the size column (NULL without it); now it has a column of its own."""
    tag = uuid.uuid4().hex[:8]
    role, password = f"sizes_user_{tag}", "sizes-pw"
    with pg.temporary_database(f"sizes_closed_{tag}") as closed:
        pg.psql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        pg.psql(f'REVOKE CONNECT ON DATABASE "{closed}" FROM PUBLIC')
        try:
            url = f"postgresql://{role}:{password}@127.0.0.1:{pg.port}/postgres"
            target = config.load({"PG_URLS": url, "S3_BUCKET": BUCKET}).connections[0].pg
            for sizes in (False, True):
                _, found = postgres.list_databases(target, sizes=sizes)
                by_name = {d.name: d for d in found}
                assert (by_name[closed].can_connect, by_name[closed].size) == (False, 0)
                assert by_name["postgres"].can_connect
                assert (by_name["postgres"].size > 0) is sizes
        finally:
            pg.psql(f"DROP ROLE {role}")


# --------------------------------------------------------------------------------------------------
# Who asks for sizes: on the one path (handler_core), with a fake source that records each listing


def listed(request: dict[str, Any] | handler_core.Request, context: Any = None,
           **edge: Any) -> tuple[list[bool], list[int]]:
    """``(sizes asked per listing, size_estimate per result)`` of one handled event."""
    source = FakeDumpSource({"main": [FakeDatabase("app", b"-- app\n", size=7_000_000)]})
    store = MemoryStorage([BUCKET])
    summary = handler_core.handle(request, context, config=config.load(ENV),
                                  edge=handler_core.Edge(storage_for=lambda conn: store, source=source, **edge))
    return source.listed_sizes, [r["size_estimate"] for r in summary["results"]]


def test_a_plain_backup_lists_no_sizes() -> None:
    assert listed({"connection": "main"}) == ([False], [0])


def test_a_dry_run_lists_sizes_for_its_on_disk_column() -> None:
    request = handler_core.Request(connections=("main",), dry_run=True)  # as `pgbkp backup --dry-run` asks
    assert listed(request) == ([True], [7_000_000])


def test_lambda_lists_sizes_for_its_time_budget() -> None:
    assert listed({"connection": "main"}, FakeLambdaContext()) == ([True], [7_000_000])


def test_a_context_without_a_clock_has_no_budget_and_lists_no_sizes() -> None:
    assert listed({"connection": "main"}, object()) == ([False], [0])


def test_an_edge_that_shows_a_progress_bar_lists_sizes() -> None:
    assert listed({"connection": "main"}, sizes=True) == ([True], [7_000_000])


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("terminal", "sizes"), [(True, True), (False, False)])
def test_pgbkp_backup_asks_for_sizes_only_for_a_bar_on_a_terminal(
        terminal: bool, sizes: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []

    def handle(request: Any, context: Any, *, config: Any, edge: handler_core.Edge) -> dict[str, Any]:
        seen.append(edge.sizes)
        return {"ok": True, "results": [], "skipped": []}

    stream = _Terminal() if terminal else io.StringIO()
    make_observer = progress.make_observer
    monkeypatch.setattr(progress, "make_observer", lambda: make_observer(stream))
    monkeypatch.setattr(handler_core, "handle", handle)
    monkeypatch.setenv("PG_URLS", ENV["PG_URLS"])
    monkeypatch.setenv("S3_BUCKET", BUCKET)
    monkeypatch.setenv("LOG_FILE", "")
    assert cli.main(["backup"]) == 0
    assert seen == [sizes]


@pytest.mark.parametrize(("terminal", "sizes"), [(True, True), (False, False)])
def test_pgbkp_serve_asks_for_sizes_only_for_a_bar_on_a_terminal(
        terminal: bool, sizes: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for name, value in {**ENV, "HEALTH_FILE": str(tmp_path / "health.json"), "CRON_ENABLED": "false"}.items():
        monkeypatch.setenv(name, value)
    source = FakeDumpSource({"main": [FakeDatabase("app", b"-- app\n", size=7_000_000)]})
    store = MemoryStorage([BUCKET])
    the_runner = runner.make_runner(config.load(), observer=progress.make_observer(_Terminal() if terminal
                                                                                   else io.StringIO()))
    backup = the_runner._backup  # what make_runner chose; the store and the dumps are the test's
    the_runner._backup = lambda stop, observer: backup(stop, observer, storage_for=lambda c: store, source=source)
    outcome = the_runner.run_once()
    assert outcome.ok, outcome.summary
    assert source.listed_sizes == [sizes]
