"""Many small databases (issue 17): ``pgbkp backup`` of a whole server against the loops people write.

    make bench-many                                        # 200 databases of ~100 KB dump each (also in make bench)
    make bench-many BENCH_MANY_ARGS="--databases 20"       # a smoke test (~2 min)
    .venv/bin/python tests/bench/bench_many.py --repeat 3 --json out.json

A throwaway PostgreSQL cluster and a moto S3 server are started here and stopped at the end, even on
failure or Ctrl-C. One small database of realistic rows (tests/bench/datagen.py: ~100 KB of plain dump,
gzip about 2-3:1) is built once and copied N times with ``CREATE DATABASE ... TEMPLATE``. Then, side by
side in one run (round after round, interleaved, so a slow minute hits every approach alike):

* ``pg_dump loop``: a bash loop of ``pg_dump -F p > /dev/null``, one database after another: the target;
* ``curl loop``: a bash loop of ``pg_dump | gzip -6 | curl --data-binary @- <presigned PUT URL>`` (URLs
  signed by boto3 beforehand, as a script would get them);
* ``python loop``: one Python process (so one interpreter start-up, one boto3 client) that runs
  ``pg_dump | gzip -6`` and ``put_object`` for each database;
* ``pgbkp``: ``pgbkp backup --json`` on the connection, retention off (the default), AES on;
* ``pgbkp+retention``: the same with RETENTION_DAYS=3 and 4 older backups of each database already in the
  bucket (1 to 4 days old: 2 are deleted per database).

Requests per database come from a separate, untimed run of each pgbkp case through tests/s3proxy.py,
which records every request (``--no-count`` skips it); the proxy names a GET it does not know (the Object
Lock configuration) GetObject. The peers send one PUT per database by design.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "handler"), str(Path(__file__).resolve().parent)]

import boto3  # noqa: E402
import botocore.config  # noqa: E402
import datagen  # noqa: E402
from bench_backup import PGBKP, machine, servers  # noqa: E402

from pgbkp import keys  # noqa: E402
from tests import s3proxy  # noqa: E402
from tests.servers import PgCluster, S3Server  # noqa: E402

BUCKET = "pgbkp-many"
CONNECTION = "many"
PASSWORD = "bench-password-Ω"
TEMPLATE = "many_template"
#: Rows per table for ~100 KB of plain dump (datagen.ROW_BYTES: 298, 385 and 272 bytes a row).
ROWS = {"customers": 50, "orders": 100, "events": 170}
#: The retention case: backups 1-4 days old, and RETENTION_DAYS=3 keeps today and the 2 days before.
OLD_BACKUP_DAYS = (1, 2, 3, 4)
RETENTION_DAYS = 3

#: A Python loop of pg_dump | gzip | boto3 put_object, run as its own process: argv = pg_dump, endpoint,
#: region, bucket, databases...; credentials and the PG connection in the environment.
PYTHON_LOOP = """
import subprocess, sys, boto3, botocore.config
pg_dump, endpoint, region, bucket, *databases = sys.argv[1:]
client = boto3.client("s3", endpoint_url=endpoint, region_name=region,
                      config=botocore.config.Config(s3={"addressing_style": "path"}))
for db in databases:
    dump = subprocess.Popen([pg_dump, "-F", "p", "-d", db], stdout=subprocess.PIPE)
    gz = subprocess.run(["gzip", "-6"], stdin=dump.stdout, capture_output=True, check=True)
    if dump.wait() != 0:
        sys.exit(f"pg_dump {db} failed")
    client.put_object(Bucket=bucket, Key=f"python/{db}.sql.gz", Body=gz.stdout)
"""


def log(msg: str) -> None:
    print(msg, flush=True)


class Many:
    def __init__(self, pg: PgCluster, s3: S3Server, args: argparse.Namespace, work: Path) -> None:
        self.pg, self.s3, self.args, self.work = pg, s3, args, work
        self.pg_dump = str(pg.bindir / "pg_dump")
        self.client = boto3.client(
            "s3", endpoint_url=s3.endpoint, region_name=s3.region, aws_access_key_id=s3.access_key,
            aws_secret_access_key=s3.secret_key,
            config=botocore.config.Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required"),
        )
        self.client.create_bucket(Bucket=BUCKET)
        self.databases = [f"many_{i:04d}" for i in range(args.databases)]
        self.seconds: dict[str, list[float]] = {}
        self.requests: dict[str, Counter[str]] = {}
        self.dump_bytes = 0
        self.gzip_bytes = 0

    # setup

    def build(self) -> None:
        started = time.monotonic()
        self.pg.create_database(TEMPLATE)
        datagen.build(datagen.psql_runner(str(self.pg.bindir), self.pg.env()), TEMPLATE, 0.1, rows=ROWS, log=log)
        self.pg.psql(f"ALTER DATABASE {TEMPLATE} IS_TEMPLATE true")  # so no approach backs it up
        script = "".join(f"CREATE DATABASE {db} TEMPLATE {TEMPLATE};\n" for db in self.databases)
        out = subprocess.run([str(self.pg.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres",
                              "-f", "-"], input=script, text=True, env=self.pg.env(), capture_output=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"creating the databases failed: {out.stderr.strip()[-2000:]}")
        dump = subprocess.run([self.pg_dump, "-F", "p", "-d", self.databases[0]], capture_output=True,
                              env=self.pg.env(), check=True).stdout
        self.dump_bytes = len(dump)
        self.gzip_bytes = len(subprocess.run(["gzip", "-6"], input=dump, capture_output=True, check=True).stdout)
        log(f"  {len(self.databases)} databases of {self.dump_bytes / 1e3:.0f} KB plain dump each (gzip -6 "
            f"{self.dump_bytes / self.gzip_bytes:.1f}:1), built in {time.monotonic() - started:.0f}s")

    def empty_bucket(self) -> None:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            batch = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if batch:
                self.client.delete_objects(Bucket=BUCKET, Delete={"Objects": batch, "Quiet": True})

    def seed_old_backups(self) -> None:
        """4 older backups of each database, named as pgbkp names them (retention reads names only)."""
        now = datetime.now(UTC).replace(tzinfo=None, second=0, microsecond=0)
        for db in self.databases:
            for days in OLD_BACKUP_DAYS:
                key = keys.object_key("", CONNECTION, db, now - timedelta(days=days), CONNECTION)
                self.client.put_object(Bucket=BUCKET, Key=key, Body=b"an older backup")

    def settle(self) -> None:
        time.sleep(0.5)  # let moto and PostgreSQL finish the last run's work before the next is timed

    # the approaches

    def timed(self, name: str, run: Callable[[], None], *, before: Callable[[], None] | None = None) -> None:
        self.empty_bucket()
        if before:
            before()
        self.settle()
        started = time.perf_counter()
        run()
        seconds = time.perf_counter() - started
        self.seconds.setdefault(name, []).append(seconds)
        log(f"  {name:<18} {seconds:7.2f}s  {seconds / len(self.databases) * 1000:6.1f} ms/database")

    def bash(self, script: str, env: dict[str, str]) -> None:
        path = self.work / "loop.sh"
        path.write_text("set -eo pipefail\n" + script)
        subprocess.run(["bash", str(path)], env=env, check=True)

    def pg_dump_loop(self) -> None:
        dbs = " ".join(self.databases)
        self.bash(f'for d in {dbs}; do "{self.pg_dump}" -F p -d "$d" > /dev/null; done\n', self.pg.env())

    def curl_loop(self) -> None:
        lines = []
        for db in self.databases:
            url = self.client.generate_presigned_url(
                "put_object", Params={"Bucket": BUCKET, "Key": f"curl/{db}.sql.gz"}, ExpiresIn=3600)
            lines.append(f'"{self.pg_dump}" -F p -d {db} | gzip -6 | curl -sSf -o /dev/null -X PUT '
                         f"-H 'Content-Type:' --data-binary @- '{url}'\n")
        script = self.work / "curl-urls.sh"  # signed beforehand, as a script would receive them
        script.write_text("".join(lines))
        self.timed("curl loop", lambda: self.bash(script.read_text(), self.pg.env()))

    def python_loop(self) -> None:
        env = {**self.pg.env(), "AWS_ACCESS_KEY_ID": self.s3.access_key, "AWS_SECRET_ACCESS_KEY": self.s3.secret_key}
        subprocess.run([sys.executable, "-c", PYTHON_LOOP, self.pg_dump, self.s3.endpoint, self.s3.region, BUCKET,
                        *self.databases], env=env, check=True)

    def pgbkp_env(self, endpoint: str, retention: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "S3_", "AWS_", "ZIP_", "RETENTION_"))}
        env.update(self.s3.env())
        env.update(S3_ENDPOINT=endpoint, PYTHONPATH=str(ROOT / "handler"),  # this checkout's pgbkp
                   PG_URLS=f"{CONNECTION}|bucket={BUCKET}|{self.pg.url()}", PG_BIN_DIR=str(self.pg.bindir),
                   IGNORE_DATABASES="postgres", ZIP_PASSWORD=PASSWORD, TIMEZONE="UTC", LOG_LEVEL="WARNING",
                   LOG_FILE="off")
        if retention:
            env["RETENTION_DAYS"] = str(RETENTION_DAYS)
        return env

    def pgbkp(self, *, retention: bool, endpoint: str | None = None) -> dict[str, Any]:
        env = self.pgbkp_env(endpoint or self.s3.endpoint, retention)
        out = subprocess.run([str(PGBKP), "backup", "--json"], env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"pgbkp backup exited {out.returncode}: {out.stderr.strip()[-2000:]}")
        summary: dict[str, Any] = json.loads(out.stdout[out.stdout.index("{"):])
        done = [r for r in summary["results"] if r["status"] == "ok"]
        if len(done) != len(self.databases):
            raise RuntimeError(f"pgbkp backed up {len(done)} of {len(self.databases)} databases")
        deleted = sum(len(r["retention"]["deleted"]) for r in done)
        expected = len(self.databases) * sum(d > RETENTION_DAYS - 1 for d in OLD_BACKUP_DAYS) if retention else 0
        if deleted != expected:
            raise RuntimeError(f"pgbkp retention deleted {deleted} backups, expected {expected}")
        return summary

    def count_requests(self, name: str, *, retention: bool) -> None:
        """One untimed pgbkp run through the recording proxy."""
        self.empty_bucket()
        if retention:
            self.seed_old_backups()
        with s3proxy.running(self.s3.endpoint) as proxy:
            self.pgbkp(retention=retention, endpoint=proxy.endpoint)
            ops = Counter(r.operation for r in proxy.requests)
        self.requests[name] = ops
        total = sum(ops.values())
        log(f"  {name:<18} {total} requests, {total / len(self.databases):.2f} per database: "
            + ", ".join(f"{op} {n}" for op, n in ops.most_common()))

    def round(self) -> None:
        self.timed("pg_dump loop", self.pg_dump_loop)
        self.curl_loop()
        self.timed("python loop", self.python_loop)
        self.timed("pgbkp", lambda: self.pgbkp(retention=False))
        self.timed("pgbkp+retention", lambda: self.pgbkp(retention=True), before=self.seed_old_backups)


def report(many: Many, info: dict[str, Any]) -> dict[str, Any]:
    n = len(many.databases)
    base = statistics.median(many.seconds["pg_dump loop"])
    rows = []
    for name, runs in many.seconds.items():
        wall = statistics.median(runs)
        ops = many.requests.get(name)
        rows.append({"approach": name, "wall_s": round(wall, 2), "per_database_ms": round(wall / n * 1000, 1),
                     "ratio_to_pg_dump_loop": round(wall / base, 2),
                     "requests_per_database": round(sum(ops.values()) / n, 2) if ops else None,
                     "requests": dict(ops) if ops else None, "runs": [round(s, 2) for s in runs]})
    log(f"\n{n} databases, {many.dump_bytes / 1e3:.0f} KB plain dump each, median of {len(runs)} round(s)")
    log(f"{'approach':<18} {'wall':>8} {'per db':>9} {'× pg_dump loop':>15} {'requests/db':>12}")
    for r in rows:
        per_db = "" if r["requests_per_database"] is None else f"{r['requests_per_database']:.2f}"
        log(f"{r['approach']:<18} {r['wall_s']:7.2f}s {r['per_database_ms']:7.1f}ms {r['ratio_to_pg_dump_loop']:14.2f}×"
            f" {per_db:>12}")
    return {"machine": info, "databases": n, "dump_bytes": many.dump_bytes, "gzip_bytes": many.gzip_bytes,
            "approaches": rows}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--databases", type=int, default=200, help="how many databases (default 200)")
    p.add_argument("--repeat", type=int, default=1, help="rounds of every approach, interleaved (default 1)")
    p.add_argument("--no-count", action="store_true", help="skip the request-counting runs through the proxy")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through servers(), which stops PostgreSQL and moto


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    info = machine()
    with servers() as (pg, s3, root), tempfile.TemporaryDirectory(dir=root) as work:
        info["postgresql"] = pg.psql("SHOW server_version")
        log(f"machine: {info['nproc']} CPUs ({info['cpu']}), PostgreSQL {info['postgresql']}")
        many = Many(pg, s3, args, Path(work))
        many.build()
        for i in range(args.repeat):
            log(f"\nround {i + 1} of {args.repeat}")
            many.round()
        if not args.no_count:
            log("\nrequests (untimed runs through tests/s3proxy.py)")
            many.count_requests("pgbkp", retention=False)
            many.count_requests("pgbkp+retention", retention=True)
        summary = report(many, info)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
