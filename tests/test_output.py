"""One byte formatter for every command, and a `pgbkp` that registers its subcommands by name."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stdout

import pytest

from pgbkp import cli, output


@pytest.mark.parametrize(("n", "shown"), [
    (0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (1500, "1.5 kB"), (2_000_000, "2.0 MB"),
    (3_210_000_000, "3.2 GB"), (4_500_000_000_000, "4.5 TB"), (5 * 10**15, "5000.0 TB"),
])
def test_sizes_are_decimal_with_the_si_symbols(n: int, shown: str) -> None:
    assert output.size(n) == shown


def test_the_backup_table_uses_the_same_units_as_the_progress_lines() -> None:
    row = {"connection": "main", "database": "app", "bucket": "b", "key": "main/app/x.zip", "status": "ok",
           "raw_bytes": 1500, "object_bytes": 2_000_000, "seconds": 1.25, "error": None, "size_estimate": 0,
           "retention": {"deleted": [], "kept": 0, "locked": []}}
    out = io.StringIO()
    with redirect_stdout(out):
        cli.print_summary({"results": [row], "skipped": []})
    assert out.getvalue().splitlines()[2].split() == ["main/app", "s3://b/main/app/x.zip", "1.5", "kB", "2.0", "MB",
                                                       "1.2", "ok"]


def test_every_subcommand_is_registered_without_a_loading_step() -> None:
    parser = cli.build_parser()
    [commands] = [a for a in parser._actions if a.dest == "command"]
    assert list(commands.choices or ()) == ["backup", "list", "restore", "verify", "serve", "health"]


def test_a_missing_dependency_fails_pgbkp_loudly_instead_of_dropping_a_command() -> None:
    """Before, `serve` and `health` silently disappeared when the runner could not be imported. Now the runner
    is imported only when its command runs (issue 17): the command stays, its help works, and running it
    fails in one line that names the missing module, before the configuration is even read."""
    code = ("import sys; sys.modules['cronsim'] = None\n"  # as if cronsim (the runner's schedule) were not installed
            "from pgbkp.cli import main\n"
            "sys.exit(main(sys.argv[1:]))")
    env = {k: v for k, v in os.environ.items() if k != "PG_URLS"}  # no configuration: the import fails first
    helped = subprocess.run([sys.executable, "-c", code, "serve", "--help"], capture_output=True, text=True,
                            timeout=60, check=False, env=env)
    assert (helped.returncode, helped.stderr) == (0, "")
    assert helped.stdout.startswith("usage: pgbkp serve")
    result = subprocess.run([sys.executable, "-c", code, "serve"], capture_output=True, text=True, timeout=60,
                            check=False, env=env)
    assert result.returncode == 1
    assert result.stderr == ("pgbkp: error: ModuleNotFoundError: import of cronsim halted; None in sys.modules "
                             "(LOG_LEVEL=DEBUG shows details)\n")
