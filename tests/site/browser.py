"""Helpers for the real-browser tests: a daphne server on the test database, and the Chromium
that Playwright drives (Debian's; Playwright never downloads a browser here)."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from playwright.sync_api import Page

from tests.conftest import ROOT, kill_group, start_process

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path("/tmp/browser-shots")
DAPHNE = ROOT / ".venv" / "bin" / "daphne"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tail(log: Path, lines: int = 40) -> str:
    if not log.exists():
        return f"({log.name}: no log)"
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"--- last lines of {log.name} ---\n" + "\n".join(text)


def start_server(
    env: dict[str, str], log: Path, timeout: float = 45
) -> tuple[subprocess.Popen[bytes], str]:
    """Start daphne on a free port with `env`; return it and its base URL once it answers."""
    port = free_port()
    args = [str(DAPHNE), "-b", "127.0.0.1", "-p", str(port), "tutor_site.asgi:application"]
    process = start_process(args, env, log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"daphne exited with {process.returncode}\n{tail(log)}")
        try:
            with urllib.request.urlopen(base + "/login/", timeout=2) as response:
                if response.status == 200:
                    return process, base
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"daphne did not answer within {timeout:.0f}s\n{tail(log)}")


def stop_cluster(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Stop a qcluster as its signal handling expects: SIGTERM to the main process only, then
    sweep the group. (A SIGTERM to the whole group also reaches the pool processes, and the
    sentinel then waits over 20 s for them before it is killed.)"""
    process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    kill_group(process)


def sign_in(page: Page, username: str, password: str) -> None:
    """Fill the sign-in form the page shows and submit it."""
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()


def horizontal_overflow(page: Page) -> int:
    """How many CSS pixels the page is wider than the window (0 when it fits)."""
    return int(
        page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    )


def shot(page: Page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
