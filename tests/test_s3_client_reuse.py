"""One boto3 S3 client per distinct settings for the life of the process (issue 17): making one costs
0.12-0.19 s, which a warm Lambda invocation and every run of ``pgbkp serve`` used to pay again. Each run
still gets its own S3Storage (its stop request and what it learnt of the buckets are per run).

Real S3 (moto) and a fake dump source; the count is of ``boto3.session.Session.client("s3")`` calls."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import boto3.session
import pytest

from pgbkp import config, handler_core, lambda_function, runner
from pgbkp.pipeline import NullObserver
from tests.fakes import FakeDatabase, FakeDumpSource, FakeLambdaContext
from tests.helpers import all_keys, make_bucket
from tests.servers import S3Server


@pytest.fixture
def bucket(s3: S3Server) -> str:
    return make_bucket(s3)


@pytest.fixture
def s3_clients_made(monkeypatch: pytest.MonkeyPatch, bucket: str) -> Iterator[list[str]]:
    """The endpoint of every S3 client made once the bucket is there, with the edges' caches empty before
    and after."""
    made: list[str] = []
    real = boto3.session.Session.client

    def client(self: Any, service_name: str, *args: Any, **kwargs: Any) -> Any:
        if service_name == "s3":
            made.append(kwargs.get("endpoint_url") or "aws")
        return real(self, service_name, *args, **kwargs)

    for cache in (lambda_function.s3_client, runner.s3_client):
        cache.cache_clear()
    monkeypatch.setattr(boto3.session.Session, "client", client)
    yield made
    for cache in (lambda_function.s3_client, runner.s3_client):
        cache.cache_clear()


def environment(s3: S3Server, bucket: str) -> dict[str, str]:
    return {**s3.env(), "PG_URLS": f"main|bucket={bucket}|postgres://u@db.invalid/postgres", "TIMEZONE": "UTC",
            "COMPRESSION_THREADS": "1"}


def source(database: str) -> FakeDumpSource:
    """A server with one database: each run backs up another, so runs within a minute make distinct keys."""
    return FakeDumpSource({"main": [FakeDatabase(database, b"-- a dump\n")]})


def test_warm_lambda_invocations_share_one_s3_client(s3: S3Server, bucket: str, s3_clients_made: list[str]) -> None:
    env = environment(s3, bucket)
    storages = []
    for database in ("one", "two"):  # as lambda_handler does on each invocation: a new edge, then the handler
        context = FakeLambdaContext()
        edge = dataclasses.replace(lambda_function.edge(env, context), source=source(database))
        storages.append(edge.storage_for(config.load(env).connections[0]))
        summary = handler_core.handle({"connection": "main"}, context, env=env, edge=edge)
        assert [(r["database"], r["status"]) for r in summary["results"]] == [(database, "ok")]
    assert s3_clients_made == [s3.endpoint]
    first, second = storages
    assert first is not second and first.client is second.client  # type: ignore[attr-defined]
    assert [k.split("/")[1] for k in all_keys(s3, bucket)] == ["one", "two"]


def test_runs_of_pgbkp_serve_share_one_s3_client(s3: S3Server, bucket: str, s3_clients_made: list[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in environment(s3, bucket).items():
        monkeypatch.setenv(name, value)
    for database in ("one", "two"):  # Runner.serve calls backup_with_handler once per run
        outcome = runner.backup_with_handler(lambda: False, NullObserver(), source=source(database))
        assert [(r["database"], r["status"]) for r in outcome.results] == [(database, "ok")]
    assert s3_clients_made == [s3.endpoint]
    assert [k.split("/")[1] for k in all_keys(s3, bucket)] == ["one", "two"]


def test_distinct_settings_still_get_their_own_client(s3: S3Server, bucket: str,
                                                      s3_clients_made: list[str]) -> None:
    settings = config.load(environment(s3, bucket)).connections[0].s3
    other = dataclasses.replace(settings, region="eu-west-1")
    assert runner.s3_client(settings) is runner.s3_client(settings)
    assert runner.s3_client(other) is not runner.s3_client(settings)
    assert s3_clients_made == [s3.endpoint, s3.endpoint]
