"""The chat socket end to end: the real ASGI app, a real inference worker process with the real
GGUF model at temperature 0, the real channel layer and database."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client

from knowledge import services as knowledge_services
from knowledge.models import Course, Enrollment
from tests.conftest import IngestFn, database_url, kill_group, start_process, wait_for
from tutoring import services
from tutoring.models import Conversation, Message

# The channel layer's group table is reached through its own database alias.
pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "channels_postgres"])

ORIGIN = (b"origin", b"http://127.0.0.1")
NOTE = (
    b"# Pump care\n\nA centrifugal pump must be primed: its casing is filled with liquid before "
    b"start-up, because the impeller cannot move air. Running a pump dry damages the "
    b"mechanical seal within seconds.\n"
)


@pytest.fixture
def worker_channel(
    channel_layer_on_test_database: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A real worker on a channel of this test's own, with the app's own hooks."""
    channel = f"tutor.inference.chat{os.getpid()}{id(tmp_path) % 100000}"
    monkeypatch.setattr(services, "INFERENCE_CHANNEL", channel)
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    env.update(DATABASE_URL=database_url(), DJANGO_SETTINGS_MODULE="tutor_site.settings")
    for name in ("TUTOR_INFERENCE_ON_FINISH", "TUTOR_INFERENCE_IS_CANCELLED"):
        env.pop(name, None)
    log = tmp_path / "worker.log"
    process = start_process(
        [sys.executable, "manage.py", "inference_worker", "--channel", channel], env, log
    )
    wait_for(
        lambda: "ready on channel" in log.read_text() or process.poll() is not None,
        90,
        "the inference worker",
    )
    assert process.poll() is None, log.read_text()
    yield channel
    kill_group(process)


@pytest.fixture
def chat(course: Course, learner: User, ingest: IngestFn) -> Conversation:
    ingest(course, "pumps.md", NOTE)
    return services.start_conversation(learner=learner, course=course)


def _cookie(user: User) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


async def _collect(communicator: WebsocketCommunicator, until: str, timeout: float) -> list[Any]:
    frames = []
    while True:
        frame = await communicator.receive_json_from(timeout=timeout)
        frames.append(frame)
        if frame["type"] == until:
            return frames


def test_it_streams_an_answer_and_saves_it(
    worker_channel: str, chat: Conversation, learner: User, settings: Any
) -> None:
    settings.TUTOR_ANSWER_TOKENS = 40
    cookie = _cookie(learner)

    async def run() -> list[Any]:
        communicator = WebsocketCommunicator(
            _application(), f"/ws/chat/{chat.pk}/", headers=[ORIGIN, cookie]
        )
        connected, _ = await communicator.connect(timeout=10)
        assert connected
        history = await communicator.receive_json_from(timeout=10)
        assert history == {"type": "history", "messages": []}
        await communicator.send_json_to(
            {"type": "ask", "text": "Why must a pump be primed?", "client_id": "c1"}
        )
        frames = await _collect(communicator, "done", timeout=60)
        # A resend of the same client id is not a second question.
        await communicator.send_json_to(
            {"type": "ask", "text": "Why must a pump be primed?", "client_id": "c1"}
        )
        repeat = await _collect(communicator, "done", timeout=20)
        await communicator.disconnect()
        await _close_layer()
        return frames + repeat

    frames = async_to_sync(run)()
    question = next(f for f in frames if f["type"] == "question")
    tokens = [f["text"] for f in frames if f["type"] == "token"]
    done = next(f for f in frames if f["type"] == "done")["message"]
    assert tokens, "the answer streamed"
    assert done["status"] in ("complete", "length")
    assert "".join(tokens) == done["content"]
    saved = Message.objects.get(pk=question["answer"]["id"])
    assert saved.content == done["content"]
    assert saved.completion_tokens > 0
    assert saved.ttft_ms is not None
    assert saved.citations
    assert saved.citations[0]["filename"] == "pumps.md"
    assert saved.mode in ("foundational", "scaffolded", "advanced")
    assert Message.objects.filter(conversation=chat, role="user").count() == 1
    assert any(f.get("repeat") for f in frames if f["type"] == "question")


def test_it_refuses_anonymous_and_foreign_sockets(
    channel_layer_on_test_database: None, chat: Conversation, course: Course, outsider: User
) -> None:
    other_learner = User.objects.create_user("ola", password="x")
    other = knowledge_services.create_course(slug="elsewhere", title="Elsewhere")
    knowledge_services.enroll(course=other, user=other_learner, role=Enrollment.Role.LEARNER)

    own, foreign = _cookie(chat.learner), _cookie(other_learner)

    async def attempt(headers: list[tuple[bytes, bytes]]) -> bool:
        communicator = WebsocketCommunicator(
            _application(), f"/ws/chat/{chat.pk}/", headers=headers
        )
        connected, _ = await communicator.connect(timeout=10)
        await communicator.disconnect()
        return bool(connected)

    async def run() -> list[bool]:
        results = [
            await attempt([ORIGIN]),  # anonymous
            await attempt([(b"origin", b"https://evil.example"), own]),  # foreign origin
            await attempt([ORIGIN, foreign]),  # not their conversation
            await attempt([ORIGIN, own]),
        ]
        await _close_layer()
        return results

    assert async_to_sync(run)() == [False, False, False, True]


def test_it_closes_the_socket_on_an_oversized_frame(
    channel_layer_on_test_database: None, chat: Conversation, settings: Any
) -> None:
    settings.TUTOR_WS_MAX_FRAME = 1024
    cookie = _cookie(chat.learner)

    async def run() -> dict[str, Any]:
        communicator = WebsocketCommunicator(
            _application(), f"/ws/chat/{chat.pk}/", headers=[ORIGIN, cookie]
        )
        connected, _ = await communicator.connect(timeout=10)
        assert connected
        await communicator.receive_json_from(timeout=10)
        await communicator.send_to(text_data='{"type": "ask", "text": "' + "x" * 5000 + '"}')
        closed = await communicator.receive_output(timeout=10)
        await communicator.disconnect()
        await _close_layer()
        return closed

    closed = async_to_sync(run)()
    assert closed["type"] == "websocket.close"
    assert closed["code"] == 1009
    assert not Message.objects.exists()


async def _close_layer() -> None:
    """Close the channel layer's pool inside the loop that opened it, before the loop ends."""
    import channels_postgres.db

    pool = channels_postgres.db.connection_pool
    channels_postgres.db.connection_pool = None
    if pool is not None:
        await pool.close()


def _application() -> Any:
    from tutor_site.asgi import application

    return application
