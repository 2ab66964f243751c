"""``python -m pgbkp``: the same as the ``pgbkp`` command."""

import sys

from pgbkp.cli import main

sys.exit(main())
