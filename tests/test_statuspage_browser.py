"""The status page of `pgbkp serve` in a real browser: headless Chromium loads it from 127.0.0.1 after a real
backup (PostgreSQL + S3 server), and the test reads the DOM Chromium built (``--dump-dom``) and takes a
screenshot. ``PGBKP_UPDATE_SCREENSHOT=1`` copies that screenshot to docs/status-page.png (the README's).

The earlier history is seeded (two weeks of daily backups, one failed), so the chart has a line to draw;
the last row is the real run's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pgbkp import history, statuspage
from tests.helpers import ROOT, make_bucket
from tests.servers import PgCluster, S3Server
from tests.test_runner import Served, real_backup_env

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SEEDED = 14
SP = ZoneInfo("America/Sao_Paulo")  # real_backup_env's TIMEZONE


class Dom(HTMLParser):
    """The elements the test looks at, from the serialized DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[dict[str, str | None]] = []
        self.rows: dict[str, list[str]] = {}
        self.svgs: dict[str, int] = {}
        self.points: dict[str, int] = {}
        self.scripts = 0
        self.external: list[str] = []
        self._db: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section" and "database" in (a.get("class") or ""):
            self._db = a.get("data-database") or ""
            self.sections.append(a)
        elif tag == "tr" and "backup" in (a.get("class") or "").split() and self._db is not None:
            self.rows.setdefault(self._db, []).append((a.get("class") or "").split()[1])
        elif tag == "svg" and self._db is not None:
            self.svgs[self._db] = self.svgs.get(self._db, 0) + 1
        elif tag == "circle" and self._db is not None:
            self.points[self._db] = self.points.get(self._db, 0) + 1
        elif tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            if (a.get(key) or "").startswith(("http:", "https:", "//")):
                self.external.append(a[key] or "")


def chromium(*args: str, user_dir: Path) -> subprocess.CompletedProcess[str]:
    """One headless Chromium run; its whole process group is killed afterwards (it leaves helpers behind)."""
    assert CHROMIUM, "chromium is missing: bash .ci/system-deps.sh installs it"
    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--no-first-run", "--disable-extensions", f"--user-data-dir={user_dir}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)  # a hang guard, not a time limit
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def seed(path: Path, database: str, now: datetime) -> None:
    """Two weeks of daily backups before the real one, growing, with one failure."""
    backups = []
    for i in range(SEEDED):
        at = (now - timedelta(days=SEEDED - i)).astimezone(SP).replace(hour=3, minute=0, second=0, microsecond=0)
        failed = i == 9
        backups.append({"at": at.isoformat(timespec="seconds"), "status": "failed" if failed else "ok",
                        "raw_bytes": 0 if failed else 61_000 + 1_100 * i,
                        "object_bytes": 0 if failed else 33_500 + 620 * i,
                        "seconds": 0.35 + (0.02 * i if not failed else 1.2),
                        "error": "backup s3://bkt/key: pg_dump: server closed the connection" if failed else None})
    doc = {"version": history.VERSION, "databases": [{
        "connection": "main", "database": database, "backups": backups,
        "last_success_at": backups[-1]["at"], "backups_total": SEEDED, "failures_total": 1,
        "retention_deleted_total": 6, "updated_at": backups[-1]["at"],
        "last_verify": {"at": backups[-2]["at"], "ok": True, "error": None}}]}
    path.write_text(json.dumps(doc), encoding="utf-8")


def test_the_status_page_renders_in_chromium_with_a_real_run(pg: PgCluster, s3: S3Server, tmp_path: Path) -> None:
    name = "statuspage_db"
    pg.create_database(name)
    try:
        pg.psql("CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 2000) g", name)
        bucket = make_bucket(s3)
        health_file = tmp_path / "health.json"
        seed(history.path_for({"HEALTH_FILE": str(health_file)}), name, datetime.now(UTC))
        env = {**real_backup_env(pg, s3, bucket, name), "HTTP_ADDR": "127.0.0.1:0", "HEALTH_FILE": str(health_file),
               "CRON_SCHEDULE": "0 3 * * *", "ZIP_PASSWORD": "zip-Secret-0815"}
        with Served(env) as served:
            url = served.wait_line("serving ").split()[1].removesuffix("/metrics,")
            served.wait_line("next run at ")
            dom = chromium("--dump-dom", f"{url}/", user_dir=tmp_path / "chrome-dom")
            shot = tmp_path / "status-page.png"
            png = chromium(f"--screenshot={shot}", "--window-size=1000,900", "--hide-scrollbars", f"{url}/",
                           user_dir=tmp_path / "chrome-shot")
            served.signal(signal.SIGTERM)
            assert served.finish() == 0
    finally:
        pg.drop_database(name)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = Dom()
    page.feed(dom.stdout)
    key = f"main/{name}"
    assert [s["data-database"] for s in page.sections] == [key]
    assert page.sections[0]["data-status"] == "ok"
    rows = page.rows[key]
    assert len(rows) == statuspage.TABLE_ROWS and rows[0] == "ok"  # newest first: the real run
    assert rows.count("failed") == 1
    assert page.svgs[key] == 1
    # A stored-size point per successful backup and a duration point per backup: 14 seeded + the real one.
    assert page.points[key] == (SEEDED + 1 - 1) + (SEEDED + 1)
    assert page.scripts == 0 and page.external == []
    assert "zip-Secret-0815" not in dom.stdout and "postgres://" not in dom.stdout
    assert png.returncode == 0, png.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("PGBKP_UPDATE_SCREENSHOT") == "1":
        shutil.copy(shot, ROOT / "docs" / "status-page.png")


@pytest.mark.parametrize("hostile", ['<script>alert(1)</script>', '"><img src=x onerror=alert(1)>'])
def test_names_and_errors_are_escaped(hostile: str) -> None:
    doc = {"version": 1, "databases": [{
        "connection": hostile, "database": hostile, "backups": [
            {"at": "2025-01-15T03:00:00+00:00", "status": "failed", "raw_bytes": 1, "object_bytes": 0,
             "seconds": 1.0, "error": hostile}],
        "last_success_at": None, "backups_total": 1, "failures_total": 1, "retention_deleted_total": 0,
        "updated_at": None, "last_verify": {"at": "2025-01-15T04:00:00+00:00", "ok": False, "error": hostile}}]}
    html = statuspage.render(doc, None, datetime(2025, 1, 16, tzinfo=UTC))
    assert hostile not in html
    page = Dom()
    page.feed(html)
    assert page.scripts == 0 and len(page.rows[f"{hostile}/{hostile}"]) == 1
