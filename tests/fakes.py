"""Stand-ins: Lambda's context and Invoke API (a test cannot have them for real), and a dump source
(pipeline.DumpSource) so that handler, pipeline and runner logic runs on MemoryStorage in milliseconds."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pgbkp import postgres
from pgbkp.config import Connection


@dataclass
class FakeLambdaContext:
    """The attributes Powertools reads from ``LambdaContext``; set ``remaining_ms`` to move the clock."""

    function_name: str = "pgbkp-test"
    function_version: str = "$LATEST"
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:pgbkp-test"
    memory_limit_in_mb: int = 1024
    aws_request_id: str = "00000000-0000-4000-8000-000000000000"
    log_group_name: str = "/aws/lambda/pgbkp-test"
    log_stream_name: str = "2025/01/15/[$LATEST]0123456789abcdef"
    remaining_ms: int = 900_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@dataclass
class FakeLambdaClient:
    """Records ``invoke`` calls and answers like Lambda does for an accepted asynchronous invocation."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    status: int = 202

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        return {"StatusCode": self.status}

    @property
    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(c["Payload"]) for c in self.calls]


@dataclass
class FakeDatabase:
    """One database of a fake server: what its dump holds, its size on disk (what the Lambda budget
    estimates from), and, with ``fail``, a dump that raises DumpError once its body has been read."""

    name: str
    body: bytes = b"-- a dump\n"
    size: int = 0
    can_connect: bool = True
    fail: str | None = None
    #: A globals dump's note (the role passwords left out).
    note: str | None = None


class FakeDump:
    """A dump handed out ``chunk`` bytes at a time; the source hears of every read and of the close."""

    def __init__(self, source: FakeDumpSource, connection: Connection, db: FakeDatabase,
                 stop: Callable[[], bool]) -> None:
        self._source, self._where, self._db, self._stop = source, f"{connection.name}/{db.name}", db, stop
        self._pos = 0
        self.reads = 0
        self.note: str | None = None

    def read(self, size: int) -> bytes:
        if self._pos >= len(self._db.body):
            if self._db.fail is not None:
                raise postgres.DumpError(f"pg_dump {self._db.name!r}: {self._db.fail}; the dump is incomplete")
            return b""
        piece = self._db.body[self._pos:self._pos + min(size, self._source.chunk)]
        self._pos += len(piece)
        self.reads += 1
        self._source.events.append(f"read {self._where}")
        if self._source.on_read is not None:
            self._source.on_read(self._where, self.reads)
        return piece

    def __enter__(self) -> FakeDump:
        return self

    def __exit__(self, *exc: object) -> None:
        self._source.events.append(f"closed {self._where}")


@dataclass
class FakeDumpSource:
    """pipeline.DumpSource without a server: ``servers`` maps a connection's name to its databases.

    ``events`` records, in order, each listing, dump opened, chunk read and dump closed, so a test can
    check the order of a run, and ``listed_sizes`` whether each listing asked for sizes on disk (a size is
    given only then, as psql does); ``on_read(where, reads)`` is called after each chunk ("main/app", 1,
    2...), the hook a test uses to act mid-dump (raise a stop flag, move Lambda's clock)."""

    servers: dict[str, list[FakeDatabase]] = field(default_factory=dict)
    #: Each connection's globals dump (pg_dumpall --globals-only), by connection name; absent: a tiny one.
    globals: dict[str, FakeDatabase] = field(default_factory=dict)
    chunk: int = 4
    on_read: Callable[[str, int], None] | None = None
    events: list[str] = field(default_factory=list)
    #: The extra pg_dump flags each dump was asked for, by "connection/database".
    dump_args: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: The ``sizes`` argument of each listing, in order: whether the run asked for sizes on disk.
    listed_sizes: list[bool] = field(default_factory=list)

    def databases(self, connection: Connection, *,
                  sizes: bool = False) -> tuple[postgres.ServerInfo, list[postgres.DatabaseInfo]]:
        self.events.append(f"list {connection.name}")
        self.listed_sizes.append(sizes)
        if connection.name not in self.servers:
            raise postgres.ConnectError(f"list databases on {connection.pg.display}: cannot reach the server "
                                        "(fake). Fix: check host, port and network access.")
        found = sorted(self.servers[connection.name], key=lambda d: d.name)
        return (postgres.ServerInfo("18.0 (fake)", 180000),
                [postgres.DatabaseInfo(d.name, d.size if d.can_connect and sizes else 0, d.can_connect)
                 for d in found])

    def version(self) -> str:
        return "18.0 (fake)"

    def dump(self, connection: Connection, database: str, *, stop: Callable[[], bool],
             lock_wait_timeout: int, extra_args: Sequence[str] = ()) -> FakeDump:
        self.events.append(f"dump {connection.name}/{database}")
        self.dump_args[f"{connection.name}/{database}"] = tuple(extra_args)
        [db] = [d for d in self.servers[connection.name] if d.name == database]
        return FakeDump(self, connection, db, stop)

    def dump_globals(self, connection: Connection, *, stop: Callable[[], bool]) -> FakeDump:
        self.events.append(f"dump {connection.name}/(globals)")
        db = self.globals.get(connection.name, FakeDatabase("(globals)", b"CREATE ROLE app;\n"))
        dump = FakeDump(self, connection, db, stop)
        dump.note = db.note
        return dump
