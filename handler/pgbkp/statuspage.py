"""The runner's status page (``/`` on HTTP_ADDR): one HTML document, no script, nothing loaded from elsewhere.

Per database: the last backups (time, status, sizes, duration, error), the last restore test, and a chart
of the stored size and the duration over the history, drawn as inline SVG. At the top: the runner's
verdict (as ``/healthz``), its last and next run. Everything shown comes from the history and the health
status, which hold no URL, password or key; every string is HTML-escaped, and error lines are passed
through the redactor once more.
"""

from __future__ import annotations

import contextlib
import html
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from pgbkp import __version__, health, history
from pgbkp.output import size
from pgbkp.redact import redact

#: Rows of the table per database (the chart draws the whole history).
TABLE_ROWS = 10
CHART_W, CHART_H, PAD_X, PAD_Y = 640, 170, 58, 22

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
header{background:#1d232b;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#c9d1db}main{padding:12px 24px;max-width:1100px}
.verdict{display:inline-block;padding:2px 10px;border-radius:10px;font-weight:600}
span.healthy,.ok:not(tr){color:#0b6b2e}span.unhealthy,.failed:not(tr){color:#b3261e}.verdict.healthy{background:#d6f5df}
.verdict.unhealthy{background:#fbdad7}section.database{background:#fff;border:1px solid #dde2e8;border-radius:8px;
margin:16px 0;padding:12px 16px}section.database h2{margin:0 0 6px;font-size:16px}
table{border-collapse:collapse;width:100%;margin-top:8px}th,td{text-align:left;padding:4px 8px;
border-bottom:1px solid #eef1f4;font-variant-numeric:tabular-nums}th{color:#5b6673;font-weight:600}
td.num{text-align:right}.err{color:#b3261e;font-size:12px}.muted{color:#5b6673}
svg{background:#fbfcfd;border:1px solid #eef1f4;border-radius:4px}.legend span{margin-right:14px}
.sw{display:inline-block;width:18px;height:3px;vertical-align:middle;margin-right:4px}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _when(iso: str | None) -> str:
    if not iso:
        return "-"
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M %z")
    except ValueError:
        return iso


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def chart(backups: Sequence[Mapping[str, Any]]) -> str:
    """Stored size (solid, left scale) and duration (dashed, right scale) over time, one point per backup.
    Failed backups are drawn as hollow red points at their duration; they stored nothing."""
    points = [(t, b) for b in backups if (t := history.timestamp(b["at"])) is not None]
    if not points:
        return ""
    t0, t1 = min(t for t, _ in points), max(t for t, _ in points)
    max_bytes = max((b["object_bytes"] for _, b in points), default=0) or 1
    max_secs = max((b["seconds"] for _, b in points), default=0.0) or 1.0
    inner_w, inner_h = CHART_W - 2 * PAD_X, CHART_H - 2 * PAD_Y

    def x(t: float) -> float:
        return PAD_X + (inner_w / 2 if t1 == t0 else (t - t0) / (t1 - t0) * inner_w)

    def y(value: float, top: float) -> float:
        return PAD_Y + inner_h - value / top * inner_h

    ok = [(t, b) for t, b in points if b["status"] == "ok"]
    size_line = " ".join(f"{x(t):.1f},{y(b['object_bytes'], max_bytes):.1f}" for t, b in ok)
    secs_line = " ".join(f"{x(t):.1f},{y(b['seconds'], max_secs):.1f}" for t, b in points)
    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{CHART_W}" height="{CHART_H}" '
           f'viewBox="0 0 {CHART_W} {CHART_H}" role="img" aria-label="stored size and duration over time">']
    bottom = PAD_Y + inner_h
    out.append(f'<line x1="{PAD_X}" y1="{bottom}" x2="{CHART_W - PAD_X}" y2="{bottom}" stroke="#c3cad3"/>')
    out.append(f'<line x1="{PAD_X}" y1="{PAD_Y}" x2="{PAD_X}" y2="{bottom}" stroke="#c3cad3"/>')
    out.append(f'<line x1="{CHART_W - PAD_X}" y1="{PAD_Y}" x2="{CHART_W - PAD_X}" y2="{bottom}" stroke="#c3cad3"/>')
    label = 'font-size="11" fill="#5b6673"'
    out.append(f'<text x="{PAD_X - 4}" y="{PAD_Y + 4}" text-anchor="end" {label}>{_e(size(max_bytes))}</text>')
    out.append(f'<text x="{PAD_X - 4}" y="{bottom}" text-anchor="end" {label}>0</text>')
    out.append(f'<text x="{CHART_W - PAD_X + 4}" y="{PAD_Y + 4}" {label}>{_e(_seconds(max_secs))}</text>')
    out.append(f'<text x="{CHART_W - PAD_X + 4}" y="{bottom}" {label}>0 s</text>')
    first, last = points[0][1]["at"], points[-1][1]["at"]
    out.append(f'<text x="{PAD_X}" y="{CHART_H - 4}" {label}>{_e(_when(first))}</text>')
    if t1 != t0:
        out.append(f'<text x="{CHART_W - PAD_X}" y="{CHART_H - 4}" text-anchor="end" {label}>{_e(_when(last))}</text>')
    if len(ok) > 1:
        out.append(f'<polyline class="stored" fill="none" stroke="#2f6fdf" stroke-width="2" points="{size_line}"/>')
    if len(points) > 1:
        out.append(f'<polyline class="duration" fill="none" stroke="#e07b18" stroke-width="1.5" '
                   f'stroke-dasharray="5 3" points="{secs_line}"/>')
    for t, b in ok:
        out.append(f'<circle class="point stored" cx="{x(t):.1f}" cy="{y(b["object_bytes"], max_bytes):.1f}" r="3" '
                   f'fill="#2f6fdf"><title>{_e(_when(b["at"]))}: {_e(size(b["object_bytes"]))} stored</title></circle>')
    for t, b in points:
        failed = b["status"] != "ok"
        out.append(f'<circle class="point duration{" failed" if failed else ""}" cx="{x(t):.1f}" '
                   f'cy="{y(b["seconds"], max_secs):.1f}" r="{4 if failed else 2.5}" '
                   f'fill="{"none" if failed else "#e07b18"}" stroke="{"#b3261e" if failed else "#e07b18"}">'
                   f'<title>{_e(_when(b["at"]))}: {_e(_seconds(b["seconds"]))}, {_e(b["status"])}</title></circle>')
    out.append("</svg>")
    return "".join(out)


def _database(db: Mapping[str, Any]) -> str:
    name = f"{db['connection']}/{db['database']}"
    backups = db["backups"]
    last = backups[-1] if backups else None
    state = last["status"] if last else "none"
    verify = db.get("last_verify")
    if verify:
        verdict = "passed" if verify["ok"] else f"failed: {redact(str(verify.get('error') or ''))}"
        verified = (f'<span class="{"ok" if verify["ok"] else "failed"}">{_e(verdict)}</span>, '
                    f'{_e(_when(verify["at"]))}')
    else:
        verified = '<span class="muted">never (run <code>pgbkp verify</code>)</span>'
    rows = []
    for b in reversed(backups[-TABLE_ROWS:]):
        error = f'<div class="err">{_e(redact(str(b["error"])))}</div>' if b.get("error") else ""
        rows.append(f'<tr class="backup {_e(b["status"])}"><td>{_e(_when(b["at"]))}</td>'
                    f'<td class="{_e(b["status"])}">{_e(b["status"])}{error}</td>'
                    f'<td class="num">{_e(size(b["raw_bytes"]))}</td><td class="num">{_e(size(b["object_bytes"]))}</td>'
                    f'<td class="num">{_e(_seconds(b["seconds"]))}</td></tr>')
    return (f'<section class="database" data-database="{_e(name)}" data-status="{_e(state)}">'
            f'<h2>{_e(name)} <span class="{_e(state)}">{_e(state)}</span></h2>'
            f'<p class="muted">last success: {_e(_when(db.get("last_success_at")))} · backups: '
            f'{db["backups_total"]}, failed: {db["failures_total"]} · retention deleted: '
            f'{db["retention_deleted_total"]} · last restore test: {verified}</p>'
            f'<div class="legend muted"><span><i class="sw" style="background:#2f6fdf"></i>stored size</span>'
            f'<span><i class="sw" style="background:#e07b18"></i>duration</span></div>'
            f'{chart(backups)}'
            '<table><thead><tr><th>finished</th><th>status</th><th>dumped</th><th>stored</th><th>duration</th></tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table></section>')


def render(doc: Mapping[str, Any], status: health.Status | None, now: datetime) -> str:
    """The whole page: ``doc`` is a history snapshot, ``status`` the runner's health status."""
    if status is not None:
        ok, why = health.evaluate(status, now)
        with contextlib.suppress(Exception):  # the page shows the runner's time zone; UTC if it is odd
            now = now.astimezone(ZoneInfo(status.timezone))
        verdict = (f'<span class="verdict {"healthy" if ok else "unhealthy"}">{"healthy" if ok else "unhealthy"}'
                   f'</span> {_e(why)}')
        last = status.last_run
        run = (f"last run: {_e(_when(last.finished_at))} ({_e(last.status)})" if last else "no run finished yet")
        if status.running_since:
            run += f" · running since {_e(_when(status.running_since))}"
        nxt = f"next run: {_e(_when(status.next_run_at))}" if status.schedule else "no schedule (CRON_ENABLED=false)"
        schedule = f" · schedule <code>{_e(status.schedule)}</code> ({_e(status.timezone)})" if status.schedule else ""
        summary = f"<p>{verdict}</p><p>{run} · {nxt}{schedule}</p>"
    else:
        summary = ""
    dbs = sorted(doc.get("databases", []), key=lambda d: (d["connection"], d["database"]))
    body = "".join(_database(db) for db in dbs) or '<p class="muted">No backup recorded yet.</p>'
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>pg-bkp status</title><style>{_STYLE}</style></head><body>"
            f"<header><h1>pg-bkp</h1><p>status at {_e(_when(now.isoformat(timespec='seconds')))} · "
            f"pgbkp {_e(__version__)} · <a href=\"metrics\" style=\"color:#9cc3ff\">metrics</a></p></header>"
            f"<main>{summary}{body}</main></body></html>")
