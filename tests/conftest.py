"""Shared people and helpers. Tests run against the real PostgreSQL + pgvector (embedded by
default, DATABASE_URL otherwise) and the real embedding model."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.db import connection
from rest_framework.test import APIClient

from knowledge import ingestion, services
from knowledge.models import Course, Document, Enrollment

ROOT = Path(__file__).resolve().parent.parent
DEMO_SLUG = "industrial-maintenance"


@pytest.fixture(scope="session", autouse=True)
def _media_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Uploaded files of the tests go to a temporary folder, shared with child processes."""
    from django.conf import settings

    media = tmp_path_factory.mktemp("media")
    previous = settings.MEDIA_ROOT
    settings.MEDIA_ROOT = media
    os.environ["TUTOR_MEDIA_ROOT"] = str(media)
    yield media
    settings.MEDIA_ROOT = previous


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: Any, django_db_blocker: Any) -> None:
    """The test database, with the cache table and the demo course ingested once."""
    with django_db_blocker.unblock():
        call_command("createcachetable", verbosity=0)
        call_command("load_demo", verbosity=0)
        for document_id in Document.objects.filter(course__slug=DEMO_SLUG).values_list(
            "pk", flat=True
        ):
            ingestion.ingest_document(document_id)


@pytest.fixture
def demo_course(db: None) -> Course:
    return Course.objects.get(slug=DEMO_SLUG)


def _user(username: str) -> User:
    return User.objects.create_user(username=username, password="pw-" + username)


@pytest.fixture
def course(db: None) -> Course:
    return services.create_course(slug="pumps-101", title="Pumps 101")


@pytest.fixture
def instructor(course: Course) -> User:
    user = _user("ina-instructor")
    services.enroll(course=course, user=user, role=Enrollment.Role.INSTRUCTOR)
    services.make_instructor_staff(user=user)
    return user


@pytest.fixture
def learner(course: Course) -> User:
    user = _user("leo-learner")
    services.enroll(course=course, user=user, role=Enrollment.Role.LEARNER)
    return user


@pytest.fixture
def outsider(db: None) -> User:
    """Teaches another course, not ours."""
    other = services.create_course(slug="other-course", title="Other course")
    user = _user("otto-outsider")
    services.enroll(course=other, user=user, role=Enrollment.Role.INSTRUCTOR)
    services.make_instructor_staff(user=user)
    return user


@pytest.fixture
def client_for() -> Callable[[User | None], APIClient]:
    def make(user: User | None) -> APIClient:
        client = APIClient()
        if user is not None:
            client.force_login(user)
        return client

    return make


IngestFn = Callable[..., Document]


@pytest.fixture
def ingest() -> IngestFn:
    """Add a file's bytes to a course and ingest it in this process; returns the document."""

    def run(course: Course, filename: str, data: bytes) -> Document:
        result = services.add_document(
            course=course, filename=filename, content=ContentFile(data, name=filename)
        )
        ingestion.ingest_document(result.document.pk)
        result.document.refresh_from_db()
        return result.document

    return run


def database_url() -> str:
    """A URL for the database the tests use, for processes the tests start."""
    params = connection.settings_dict
    host = params["HOST"] or "localhost"
    name = params["NAME"]
    if host.startswith("/"):
        return f"postgresql://{params['USER']}@/{name}?host={host}"
    password = f":{params['PASSWORD']}" if params.get("PASSWORD") else ""
    port = f":{params['PORT']}" if params.get("PORT") else ""
    return f"postgresql://{params['USER']}{password}@{host}{port}/{name}"


@pytest.fixture
def process_env(transactional_db: None) -> dict[str, str]:
    """Environment for a child process (cluster, server, command) sharing the test database."""
    env = dict(os.environ)
    env["DATABASE_URL"] = database_url()
    env["DJANGO_SETTINGS_MODULE"] = "tutor_site.settings"
    env.pop("REDIS_URL", None)
    return env


def start_process(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so a kill reaches every worker
    )


def kill_group(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture
def start_cluster(
    process_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `manage.py qcluster` against the test database; stopped after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(**extra_env: str) -> subprocess.Popen[bytes]:
        env = {**process_env, **extra_env}
        log = tmp_path / f"cluster-{len(started)}.log"
        process = start_process([sys.executable, "manage.py", "qcluster"], env, log)
        started.append(process)
        return process

    yield start
    for process in started:
        # SIGTERM to the main process only: it stops its workers itself. Sent to the whole
        # group, the cluster hangs until it is killed.
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
        kill_group(process)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def channel_layer_on_test_database(transactional_db: None) -> Iterator[None]:
    """The default channel layer, on the test database and new for this test's event loops.

    The settings built the layer's config before pytest-django switched to the test database,
    and channels-postgres keeps one connection pool per process, bound to the event loop that
    made it; each test runs its async code in loops of its own.
    """
    import asyncio

    import channels_postgres.db
    from channels.layers import channel_layers
    from django.conf import settings

    config = settings.CHANNEL_LAYERS["default"].get("CONFIG", {})
    previous = config.get("NAME")
    if "NAME" in config:
        config["NAME"] = connection.settings_dict["NAME"]

    def reset() -> None:
        channel_layers.backends.clear()
        channels_postgres.db.connection_pool = None
        channels_postgres.db.is_creating_connection_pool = asyncio.Lock()

    reset()
    yield
    reset()
    if previous is not None:
        config["NAME"] = previous
