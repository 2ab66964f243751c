"""`make demo`: a throwaway PostgreSQL with sample data and a local S3-compatible server; back up, list,
restore, and show that the restore equals the original. Everything it starts is stopped at the end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

from pgbkp import integrity
from tests.helpers import PGBKP, all_keys, dump_sql, make_bucket, s3_client
from tests.servers import PgCluster, S3Server, temp_root

SAMPLE = """
CREATE TABLE customers (id serial PRIMARY KEY, name text, city text, joined date);
INSERT INTO customers (name, city, joined)
SELECT 'Customer ' || g, (ARRAY['São Paulo','Lisboa','Berlin','Tokyo'])[1 + g % 4], DATE '2024-01-01' + g % 700
FROM generate_series(1, 5000) g;
CREATE TABLE orders (id serial PRIMARY KEY, customer_id int REFERENCES customers, total numeric(10,2),
                     note text, created timestamptz DEFAULT now());
INSERT INTO orders (customer_id, total, note)
SELECT 1 + g % 5000, round((random() * 500)::numeric, 2), 'order #' || g || ' — ' || md5(g::text)
FROM generate_series(1, 20000) g;
"""


def step(title: str) -> None:
    print(f"\n\033[1m==> {title}\033[0m" if sys.stdout.isatty() else f"\n==> {title}", flush=True)


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    print("$ pgbkp " + " ".join(args), flush=True)
    res = subprocess.run([PGBKP, *args], env=env, text=True, capture_output=True, check=False)
    print(textwrap.indent(res.stdout.rstrip(), "  "))
    if res.returncode != 0:
        print(textwrap.indent(res.stderr.rstrip(), "  "), file=sys.stderr)
        raise SystemExit(f"demo failed: pgbkp {args[0]} exited {res.returncode}")
    return res


def main() -> int:
    root = temp_root("pgbkp-demo-")
    pg, s3 = PgCluster(root), S3Server()
    try:
        step("starting a throwaway PostgreSQL and a local S3-compatible server (127.0.0.1 only)")
        pg.start()
        s3.start()
        print(f"  PostgreSQL {pg.psql('SHOW server_version')} on 127.0.0.1:{pg.port}; S3 at {s3.endpoint}")
        pg.create_database("shop")
        pg.psql(SAMPLE, "shop")
        bucket = make_bucket(s3, "pgbkp-demo")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "S3_", "ZIP_", "RETENTION_"))}
        env.update(s3.env(), PG_URLS=f"demo|bucket={bucket}|{pg.url()}", ZIP_PASSWORD="demo-zip-password",
                   RETENTION_DAYS="7", LOG_FORMAT="text", LOG_LEVEL="WARNING", LOG_FILE="")

        step("backing up every database: pg_dump -> AES-256 ZIP -> S3 multipart upload, no temp files")
        run(["backup"], env)

        step("the objects in the bucket, each ending with its own integrity record (the ZIP comment)")
        client = s3_client(s3)
        for key in all_keys(s3, bucket):
            tail = client.get_object(Bucket=bucket, Key=key, Range="bytes=-400")["Body"].read()
            record = integrity.parse(tail[tail.rindex(integrity.MAGIC):])
            print(f"  s3://{bucket}/{key}  {record.size + len(record.encode())} bytes  "
                  f"sha256={record.sha256[:16]}…  dump {record.raw_size} bytes")

        step("listing backups")
        run(["list"], env)

        step("restoring the latest backup of 'shop' into a new database 'shop_restored'")
        # No password in the URL (it would show in `ps`): same server and user as the connection, so
        # restore takes the connection's; PGPASSWORD would serve for another server.
        target = f"postgresql://{pg.user}@127.0.0.1:{pg.port}/shop_restored"
        run(["restore", "--connection", "demo", "--database", "shop", "--latest", "--target-url", target,
             "--create"], env)

        step("checking the restore")
        rows = pg.psql("SELECT (SELECT count(*) FROM customers) || ' customers, ' || "
                       "(SELECT count(*) FROM orders) || ' orders'", "shop_restored")
        same = dump_sql(pg, "shop") == dump_sql(pg, "shop_restored")
        print(f"  shop_restored has {rows}; pg_dump of the restore equals the original: {same}")
        if not same:
            raise SystemExit("demo failed: the restored database differs from the original")
        print("\ndemo finished: everything it started is being stopped now.")
        return 0
    finally:
        s3.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
