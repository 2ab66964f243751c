"""What every command prints and returns: exit codes, byte sizes, tables, the selection options, and the
one-line-per-database summary that pings and logs carry.

Shared by the edges (``cli``, ``restore_cli``, ``runner``) and ``progress``, so it sits below all of them
and imports nothing from pgbkp: one formatter, one set of exit codes, no edge borrowing from another.

Sizes are decimal (1 kB = 1000 B), the one unit system every figure the user sees already uses: the
tqdm bars (``unit_divisor=1000``), the MB/s rates of the progress lines, and S3 consoles. "kB" is the SI
symbol; "KB" would read as 1024 to many.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

#: 0 all good; 1 some backup, restore or check failed; 2 a configuration or usage error (nothing ran).
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

#: The statuses of a result that count as success. "dispatched": handed to an ECS Fargate task, which
#: backs it up and reports the outcome itself (its logs, metrics and exit code).
OK_STATUSES = ("ok", "dry-run", "dispatched")


def size(n: float) -> str:
    """``999 B``, ``1.5 kB``, ``2.0 MB``: decimal units, one decimal above bytes."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Left-aligned columns under a header and a rule, two spaces apart."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(lines)


def add_selection(parser: argparse.ArgumentParser, *, databases: str = "append") -> None:
    """The --connection/--database options every command that picks databases shares.

    ``databases="store"`` takes one database instead of a repeatable list."""
    parser.add_argument("--connection", "-c", action="append", metavar="NAME",
                        help="only this connection (its prefix or host, or 0-based index); repeatable")
    parser.add_argument("--database", "-d", action=databases, metavar="DB",
                        help="only this database" + ("; repeatable" if databases == "append" else ""))


def summary_text(results: Sequence[Mapping[str, Any]]) -> str:
    """A head line, then one line per database with its error: the body of a health ping and the line a
    log reader needs, the same for ``pgbkp backup`` and ``pgbkp serve``."""
    lines = []
    for r in results:
        where = f"s3://{r['bucket']}/{r['key']}" if r.get("key") else "-"
        if r["status"] == "dispatched":  # nothing done here: the task reports its own backup
            lines.append(f"{r['status']:<8} {r['connection']}/{r['database']} to {r.get('dispatched_to')} task "
                         f"{r.get('task_arn')}")
            continue
        line = (f"{r['status']:<8} {r['connection']}/{r['database']} {where} "
                f"{size(r.get('raw_bytes') or 0)} dumped, {size(r.get('object_bytes') or 0)} "
                f"stored, {float(r.get('seconds') or 0):.1f}s")
        lines.append(line + (f": {r['error']}" if r.get("error") else ""))
    failed = sum(1 for r in results if r["status"] not in OK_STATUSES)
    head = f"{len(lines)} database(s): " + (f"{failed} failed" if failed else "all ok")
    return "\n".join([head, *lines])
