"""The reference tables of docs/configuration.md, written from the code's own tables.

    python -m pgbkp.config.docs --write docs/configuration.md   # rewrite the generated parts in place
    python -m pgbkp.config.docs                                  # print them

The generated parts sit between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->`` lines; the rest
of the file is written by hand. tests/test_config_docs.py fails when the file and the code disagree.
Not imported by ``pgbkp.config``: only this command and the test need it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pgbkp.config.typos import KNOWN, MIGRATIONS
from pgbkp.config.variables import GROUPS, VARIABLES

COMMAND = "python -m pgbkp.config.docs --write docs/configuration.md"
_NAME = re.compile(r"\b(" + "|".join(sorted(KNOWN, key=len, reverse=True)) + r")\b")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def variables_table() -> str:
    """One table per group, in the table's order."""
    out: list[str] = []
    for group, title in GROUPS.items():
        out += [f"### {title}", "", "| variable | meaning | accepted values | default |", "| --- | --- | --- | --- |"]
        out += [f"| `{v.name}` | {_cell(v.meaning)} | {_cell(v.accepted)} | {_cell(v.default)} |"
                for v in VARIABLES if v.group == group]
        out.append("")
    return "\n".join(out).rstrip("\n")


def migrations_table() -> str:
    out = ["| their variable | read by | in pg-bkp | notes |", "| --- | --- | --- | --- |"]
    for m in MIGRATIONS:
        use = f"`{m.use}`" if m.use else "—"
        note = _NAME.sub(r"`\1`", m.note)
        out.append(f"| `{m.name}` | {m.source or 'common usage'} | {use} | {_cell(note)} |")
    return "\n".join(out)


PARTS = {"variables": variables_table, "migrations": migrations_table}


def begin(name: str) -> str:
    return f"<!-- generated: {name} -->"


def end(name: str) -> str:
    return f"<!-- end: {name} -->"


def render(text: str) -> str:
    """``text`` with every generated part replaced by what the code says now."""
    for name, make in PARTS.items():
        pattern = re.compile(re.escape(begin(name)) + r"\n.*?" + re.escape(end(name)), re.DOTALL)
        if not pattern.search(text):
            raise SystemExit(f"docs: no '{begin(name)}' ... '{end(name)}' block. Fix: add both lines where the "
                             "table belongs.")
        block = f"{begin(name)}\n{make()}\n{end(name)}"
        text = pattern.sub(block.replace("\\", "\\\\"), text)  # a table's \| must stay as it is
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pgbkp.config.docs",
                                     description="Write the reference tables of docs/configuration.md.")
    parser.add_argument("--write", metavar="FILE", type=Path, help="rewrite the generated parts of FILE in place")
    args = parser.parse_args(argv)
    if args.write is None:
        print("\n\n".join(f"{begin(n)}\n{f()}\n{end(n)}" for n, f in PARTS.items()))
        return 0
    try:
        text = args.write.read_text(encoding="utf-8")
        new = render(text)
        if new != text:
            args.write.write_text(new, encoding="utf-8")
    except OSError as exc:
        print(f"docs: write {args.write}: {exc.strerror}. Fix: run it from the repository's root.", file=sys.stderr)
        return 2
    print(f"{args.write}: {'updated' if new != text else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
