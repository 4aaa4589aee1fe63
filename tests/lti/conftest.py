"""A real platform (lti1p3platform behind a local HTTP server, one per test module), the tool
under pytest-django's live server, and a browser walk through a launch."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

import pytest
import requests
from django.core.cache import cache
from lti_tool.models import LtiDeployment, LtiRegistration

from tests.lti.platform import PlatformServer


class FormParser(HTMLParser):
    """The first form whose action contains `wanted`: its action and hidden/checked fields."""

    def __init__(self, wanted: str) -> None:
        super().__init__()
        self.wanted = wanted
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "form" and self.action is None and self.wanted in (found.get("action") or ""):
            self.action, self._inside = found.get("action"), True
        unchecked = found.get("type") == "radio" and "checked" not in found
        if tag == "input" and self._inside and found.get("name") and not unchecked:
            self.fields[str(found["name"])] = found.get("value") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._inside = False


def parse_form(html: str, wanted: str = "") -> FormParser:
    parser = FormParser(wanted)
    parser.feed(html)
    assert parser.action, f"no form {wanted!r} in: {html[:300]}"
    return parser


@dataclass
class Tool:
    base: str
    registration: LtiRegistration
    deployment: LtiDeployment

    @property
    def launch_url(self) -> str:
        return self.base + "/lti/launch/"

    @property
    def login_url(self) -> str:
        return f"{self.base}/lti/init/{self.registration.uuid}/"


_BROWSERS: list[requests.Session] = []


def new_browser() -> requests.Session:
    """A browser (cookie jar); closed after the test."""
    browser = requests.Session()
    _BROWSERS.append(browser)
    return browser


@pytest.fixture(autouse=True)
def _close_browsers() -> Iterator[None]:
    # A kept-alive connection holds a live-server thread, and that thread a database
    # connection, which would keep the test database from being dropped at the end.
    yield
    while _BROWSERS:
        _BROWSERS.pop().close()
    for thread in threading.enumerate():
        if "process_request_thread" in thread.name:  # the live server's, now closing
            thread.join(timeout=10)


@pytest.fixture(scope="module")
def platform_server() -> Iterator[PlatformServer]:
    server = PlatformServer().start()
    yield server
    server.stop()


@pytest.fixture
def platform(platform_server: PlatformServer) -> PlatformServer:
    platform_server.reset()
    platform_server.add_user("u-learner", "Lena Learner", ["Learner"])
    platform_server.add_user("u-teacher", "Tom Teacher", ["Instructor"])
    return platform_server


@pytest.fixture
def tool(live_server: Any, transactional_db: None, platform: PlatformServer) -> Tool:
    cache.clear()  # the cache table is not flushed between transactional tests
    registration = LtiRegistration.objects.create(
        name="Moodle",
        issuer=platform.url,
        client_id=platform.state.client_id,
        auth_url=platform.url + "/auth",
        token_url=platform.url + "/token",
        keyset_url=platform.url + "/jwks",
    )
    deployment = LtiDeployment.objects.create(
        registration=registration, deployment_id="1", is_active=True
    )
    tool = Tool(live_server.url, registration, deployment)
    state = platform.state
    state.tool_login_url = tool.login_url
    state.tool_launch_url = tool.launch_url
    state.tool_jwks_url = tool.base + "/lti/jwks/"
    state.redirect_uris = [tool.launch_url]
    return tool


@pytest.fixture
def run_tasks_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """django-q2's sync mode: async_task runs the task in the caller, through the worker."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", True)


@dataclass
class Walk:
    login: requests.Response
    auth: requests.Response
    launch: requests.Response
    form: dict[str, str]
    browser: requests.Session


def launch_as(
    platform: PlatformServer,
    tool: Tool,
    user_id: str = "u-learner",
    *,
    browser: requests.Session | None = None,
) -> Walk:
    """The browser's walk: login initiation -> platform auth -> form post to the tool."""
    browser = browser or new_browser()
    params = platform.login_initiation_params(user_id)
    params["lti1p3_new_window"] = "1"  # past pylti1p3's JavaScript cookie check
    login = browser.post(tool.login_url, data=params, allow_redirects=False)
    assert login.status_code == 302, (login.status_code, login.text[:300])
    auth = browser.get(login.headers["Location"])
    assert auth.status_code == 200, auth.text
    form = parse_form(auth.text)
    launch = browser.post(str(form.action), data=form.fields, allow_redirects=False)
    return Walk(login, auth, launch, form.fields, browser)
