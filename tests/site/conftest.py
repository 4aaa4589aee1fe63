"""Helpers of the site's process-level tests: free ports, other databases on the tests' server,
a Redis database of their own, and environments for child processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from django.db import connection

from tests.conftest import kill_group

# The Redis database number these tests use, flushed before and after; nothing else is touched.
REDIS_DB = 13
REDIS_SERVER = os.environ.get("TUTOR_TEST_REDIS", "redis://127.0.0.1:6379")

# Variables of this test session that must not leak into a process meant to stand on its own.
SESSION_ONLY = ("DATABASE_URL", "REDIS_URL", "TUTOR_TEST_DATABASE", "TUTOR_MEDIA_ROOT")


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_params() -> dict[str, Any]:
    """psycopg keywords for the PostgreSQL server the tests use (any database on it)."""
    params = connection.settings_dict
    found: dict[str, Any] = {"host": params["HOST"] or "localhost", "user": params["USER"]}
    if params.get("PORT"):
        found["port"] = params["PORT"]
    if params.get("PASSWORD"):
        found["password"] = params["PASSWORD"]
    return found


def url_for_database(name: str) -> str:
    """A DATABASE_URL for another database on the tests' server."""
    params = server_params()
    host = str(params["host"])
    if host.startswith("/"):
        return f"postgresql://{params['user']}@/{name}?host={quote(host)}"
    password = f":{quote(params['password'])}" if params.get("password") else ""
    port = f":{params['port']}" if params.get("port") else ""
    return f"postgresql://{params['user']}{password}@{host}{port}/{name}"


def child_env(**extra: str) -> dict[str, str]:
    """A child's environment: the tests' database server (never a server of its own), no Redis
    unless asked, and `extra` on top."""
    env = {key: value for key, value in os.environ.items() if key not in SESSION_ONLY}
    env["DJANGO_SETTINGS_MODULE"] = "tutor_site.settings"
    env["DATABASE_URL"] = url_for_database(connection.settings_dict["NAME"])
    env.update(extra)
    return env


@pytest.fixture
def redis_url() -> Iterator[str]:
    """REDIS_URL of a Redis database of our own, empty before and after the test."""
    import redis

    url = f"{REDIS_SERVER}/{REDIS_DB}"
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis server answers at {REDIS_SERVER} ({exc}); start one to run this")
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def stop_cluster(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Stop a `qcluster` the way django-q2 expects: SIGTERM to its main process only.

    A SIGTERM to the whole group kills the sentinel at once (it keeps SIG_DFL); when it dies
    inside `stop_event.wait()`, the main process's `stop_event.set()` waits forever for it to
    wake (multiprocessing's Condition.notify_all), until something sends SIGKILL.
    """
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process, signal.SIGKILL)
        raise AssertionError(f"the cluster did not stop within {timeout:.0f}s of SIGTERM") from None
    kill_group(process, signal.SIGKILL)  # anything of its group left behind
