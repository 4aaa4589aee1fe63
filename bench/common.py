"""What both benchmarks share: a database of their own, the machine's load, tables, percentiles.

The benchmarks never touch the dev database `tutor`: they create their own database (default
`tutor_bench`) on the same embedded PostgreSQL server and point Django at it through
DATABASE_URL before Django is set up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE = "tutor_bench"


def log(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the table and the summary line."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load() -> str:
    """The load averages as `uptime` prints them, e.g. 'load average: 1.02, 0.80, 0.61'."""
    try:
        out = subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout
        return "load average:" + out.rsplit("load average:", 1)[1].rstrip()
    except (OSError, subprocess.CalledProcessError, IndexError):
        one, five, fifteen = os.getloadavg()
        return f"load average: {one:.2f}, {five:.2f}, {fifteen:.2f}"


def setup_django(database: str = DEFAULT_DATABASE) -> str:
    """Start the embedded server, create `database` if needed, set Django up on it, migrate.

    Returns the socket folder of the server.
    """
    if database in ("tutor", "postgres", "template0", "template1") or database.startswith("test_"):
        raise SystemExit(f"refusing to benchmark in the database {database!r}; pick another")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    # The ingestion logs one line per document at INFO; the benchmark has its own progress lines.
    os.environ.setdefault("TUTOR_LOG_LEVEL", "WARNING")
    import psycopg

    from tutor_site import pgserver

    socket = pgserver.ensure_running()
    with psycopg.connect(
        host=str(socket), user="postgres", dbname="postgres", autocommit=True
    ) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        if exists.fetchone() is None:
            log(f"creating database {database}")
            conn.execute(f'CREATE DATABASE "{database}"')
    os.environ["DATABASE_URL"] = f"postgresql://postgres@/{database}?host={socket}"
    os.environ["DJANGO_SETTINGS_MODULE"] = "tutor_site.settings"
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    if connection.settings_dict["NAME"] != database:
        raise SystemExit(f"Django is on {connection.settings_dict['NAME']!r}, not {database!r}")
    call_command("migrate", verbosity=0, interactive=False)
    return str(socket)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation as numpy's default."""
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """A Markdown table with padded columns; `right` says which columns are right-aligned."""
    widths = [
        max([len(str(header)), *(len(str(row[i])) for row in rows)])
        for i, header in enumerate(headers)
    ]

    def line(cells: Sequence[str]) -> str:
        padded = [
            str(cell).rjust(width) if align else str(cell).ljust(width)
            for cell, width, align in zip(cells, widths, right, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        "-" * (width + 1) + ":" if align else ":" + "-" * (width + 1)
        for width, align in zip(widths, right, strict=True)
    )
    return "\n".join([line(headers), rule + "|", *(line(row) for row in rows)])
