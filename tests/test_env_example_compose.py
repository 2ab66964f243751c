""".env.example's header says how docker-compose reads a value. Each claim, checked against the real tool
(`docker-compose config` resolves an env_file without a Docker engine)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT

COMPOSE_FILE = "services:\n  s:\n    image: busybox\n    env_file: [.env]\n"
#: (line in .env, the value the container gets), one per claim in .env.example's header.
CLAIMS = [
    ("PLAIN=postgres://u:p%40ss@h/db", "postgres://u:p%40ss@h/db"),
    ("PIPES=pfx|bkt-1|a=b,c@d", "pfx|bkt-1|a=b,c@d"),
    ("SPACES=  x y  ", "x y"),  # spaces around it are dropped
    ('DOUBLE=" x "', " x "),  # one pair of quotes is removed; quoting keeps the outer spaces
    ("SINGLE=' x '", " x "),
    ("COMMENT=a #b", "a"),  # unquoted, " #" starts a comment
    ("HASH=a#b", "a#b"),  # a # with no space before it is kept
    ('QUOTED_HASH="a #b"', "a #b"),
    ('ESCAPE="a\\nb"', "a\nb"),  # inside "...", a backslash escapes
    ("SINGLE_ESCAPE='a\\nb'", "a\\nb"),
    ("BACKSLASH=a\\nb", "a\\nb"),
    ("BRACES=a${UNSET_FOR_THIS_TEST}b", "ab"),  # ${NAME} is replaced, empty when unset...
    ("BRACES_QUOTED='a${PLAIN}b'", "apostgres://u:p%40ss@h/dbb"),  # ...even inside quotes
    ("DOLLAR=pa$word$", "pa$word$"),  # any other $ is kept
]


def test_the_header_states_these_claims() -> None:
    header = ROOT.joinpath(".env.example").read_text(encoding="utf-8").split("\n\n", 1)[0]
    for claim in ("spaces around it are dropped", "one pair of quotes", '" #" starts a comment',
                  "a backslash is an escape", "${NAME} is replaced", "even inside quotes", "any other $ is kept"):
        assert claim in header, claim
    assert "keeps quotes" not in header


def test_docker_compose_reads_values_as_the_header_says(tmp_path: Path) -> None:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is missing: apt-get install docker-compose (it needs no Docker engine for config)"
    (tmp_path / "docker-compose.yml").write_text(COMPOSE_FILE, encoding="utf-8")
    (tmp_path / ".env").write_text("".join(line + "\n" for line, _ in CLAIMS), encoding="utf-8")
    out = subprocess.run([exe, "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    doc: dict[str, Any] = yaml.safe_load(out.stdout)
    # `config` prints a literal $ as $$ (its own escape); undo that to get the value the container sees.
    got = {k: v.replace("$$", "$") for k, v in doc["services"]["s"]["environment"].items()}
    assert got == {line.split("=", 1)[0]: value for line, value in CLAIMS}


@pytest.mark.parametrize("key", ["PG_URLS", "S3_ENDPOINT", "S3_SECRET_KEY"])
def test_the_example_values_need_no_quotes(key: str) -> None:
    line = next(x for x in ROOT.joinpath(".env.example").read_text(encoding="utf-8").splitlines()
                if x.startswith(f"{key}="))
    value = line.split("=", 1)[1]
    assert value == value.strip() and value[:1] not in "'\"" and " #" not in value and "${" not in value
