"""The chat socket end to end: the real ASGI app, a real inference worker process with the real
GGUF model at temperature 0, the real channel layer and database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client

from knowledge import services as knowledge_services
from knowledge.models import Course, Enrollment, Skill
from learners.models import Attempt, Item
from tests.conftest import IngestFn, kill_group, wait_for
from tests.tutoring.conftest import start_app_worker
from tutoring import services
from tutoring.models import Check, Conversation, Message

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
    """A real worker on a channel of this test's own."""
    channel = f"tutor.inference.chat{os.getpid()}{id(tmp_path) % 100000}"
    monkeypatch.setattr(services, "INFERENCE_CHANNEL", channel)
    process = start_app_worker(channel, tmp_path / "worker.log")
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


@pytest.fixture
def priming(course: Course) -> Skill:
    return Skill.objects.create(
        course=course, name="Pump Priming", description="Primes a centrifugal pump before start."
    )


@pytest.fixture
def casing_item(priming: Skill) -> Item:
    """An approved multiple-choice check question on the focus skill."""
    return Item.objects.create(
        course=priming.course,
        skill=priming,
        stem="What must fill the casing before a centrifugal pump starts?",
        choices=["Air", "Liquid", "Grease"],
        answer="Liquid",
        status=Item.Status.APPROVED,
    )


@pytest.fixture
def focused_chat(chat: Conversation, priming: Skill) -> Conversation:
    chat.focus_skill = priming
    chat.save()
    return chat


def _communicator(conversation: Conversation, cookie: tuple[bytes, bytes], after: int = 0) -> Any:
    path = f"/ws/chat/{conversation.pk}/" + (f"?after={after}" if after else "")
    return WebsocketCommunicator(_application(), path, headers=[ORIGIN, cookie])


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
        assert history == {"type": "history", "messages": [], "checks": []}
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
    assert question["answer"]["extract"], "the quotes come with the question, before any token"
    assert all(q["text"] in saved.citations[0]["text"] for q in question["answer"]["extract"])
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


def test_a_check_question_follows_the_answer_and_moves_the_mastery_meter(
    worker_channel: str,
    focused_chat: Conversation,
    priming: Skill,
    casing_item: Item,
    settings: Any,
) -> None:
    settings.TUTOR_ANSWER_TOKENS = 24
    item = casing_item
    cookie = _cookie(focused_chat.learner)

    async def run() -> list[Any]:
        communicator = _communicator(focused_chat, cookie)
        assert (await communicator.connect(timeout=10))[0]
        await communicator.receive_json_from(timeout=10)
        await communicator.send_json_to({"type": "ask", "text": "Why prime a pump?"})
        frames = await _collect(communicator, "check", timeout=60)
        offered = frames[-1]["check"]
        await communicator.send_json_to({"type": "answer", "check": offered["id"], "text": "Air"})
        frames += await _collect(communicator, "graded", timeout=10)
        await communicator.send_json_to({"type": "answer", "check": offered["id"], "text": "x"})
        frames += await _collect(communicator, "error", timeout=10)
        await communicator.disconnect()
        await _close_layer()
        return frames

    frames = async_to_sync(run)()
    done = next(f for f in frames if f["type"] == "done")["message"]
    offered = next(f for f in frames if f["type"] == "check")["check"]
    assert done["skill_id"] == priming.pk
    assert offered["stem"] == item.stem and offered["choices"] == item.choices
    assert offered["answer"] is None, "the answer is not sent before the response"
    graded = next(f for f in frames if f["type"] == "graded")
    assert graded["check"]["correct"] is False and graded["check"]["answer"] == "Liquid"
    assert graded["mastery"]["skill_id"] == priming.pk
    assert graded["mastery"]["p_known"] < graded["check"]["p_before"]
    errors = [f["error"] for f in frames if f["type"] == "error"]
    assert any("answered already" in e for e in errors)
    attempt = Attempt.objects.get(item=item)
    assert attempt.correct is False and attempt.source == "chat"
    assert attempt.p_after == pytest.approx(graded["mastery"]["p_known"], abs=1e-4)


def test_a_short_answer_is_graded_by_the_model_with_a_reason(
    worker_channel: str, focused_chat: Conversation, priming: Skill, settings: Any
) -> None:
    settings.TUTOR_ANSWER_TOKENS = 24
    item = Item.objects.create(
        course=priming.course,
        skill=priming,
        stem="Why must a centrifugal pump be primed before start-up?",
        kind=Item.Kind.SHORT_ANSWER,
        answer="The impeller cannot move air, so the casing is filled with liquid first.",
        status=Item.Status.APPROVED,
    )
    cookie = _cookie(focused_chat.learner)

    async def run() -> list[Any]:
        communicator = _communicator(focused_chat, cookie)
        assert (await communicator.connect(timeout=10))[0]
        await communicator.receive_json_from(timeout=10)
        await communicator.send_json_to({"type": "ask", "text": "Why prime a pump?"})
        frames = await _collect(communicator, "check", timeout=60)
        offered = frames[-1]["check"]
        response = "Fill the casing with liquid."  # half of the answer: the bounds leave it open
        await communicator.send_json_to(
            {"type": "answer", "check": offered["id"], "text": response}
        )
        frames += await _collect(communicator, "graded", timeout=60)
        await communicator.disconnect()
        await _close_layer()
        return frames

    frames = async_to_sync(run)()
    graded = next(f for f in frames if f["type"] == "graded")["check"]
    check = Check.objects.get(pk=graded["id"])
    assert check.item == item and check.status == Check.Status.GRADED
    # Neither the words nor the meaning settle it: the model graded it, with its reason.
    assert check.graded_by == "model"
    assert graded["reason"] and graded["correct"] in (True, False)
    assert Attempt.objects.filter(item=item, key=f"check:{check.pk}").count() == 1


def test_stop_ends_the_answer_being_written(
    worker_channel: str, chat: Conversation, settings: Any
) -> None:
    settings.TUTOR_ANSWER_TOKENS = 400
    cookie = _cookie(chat.learner)

    async def run() -> list[Any]:
        communicator = _communicator(chat, cookie)
        assert (await communicator.connect(timeout=10))[0]
        await communicator.receive_json_from(timeout=10)
        await communicator.send_json_to(
            {"type": "ask", "text": "Explain in detail, step by step, how to prime a pump."}
        )
        frames = await _collect(communicator, "token", timeout=60)
        await communicator.send_json_to({"type": "stop"})
        frames += await _collect(communicator, "done", timeout=30)
        await communicator.disconnect()
        await _close_layer()
        return frames

    frames = async_to_sync(run)()
    done = next(f for f in frames if f["type"] == "done")["message"]
    assert done["status"] == "stopped"
    saved = Message.objects.get(pk=done["id"])
    assert saved.status == "stopped" and 0 < saved.completion_tokens < 400
    assert saved.content == "".join(f["text"] for f in frames if f["type"] == "token")


def test_a_reconnecting_client_gets_the_answer_that_finished_while_it_was_away(
    worker_channel: str, focused_chat: Conversation, casing_item: Item, settings: Any
) -> None:
    settings.TUTOR_ANSWER_TOKENS = 32
    chat = focused_chat
    cookie = _cookie(chat.learner)

    def finished(answer_id: int) -> None:
        wait_for(lambda: Message.objects.get(pk=answer_id).is_finished(), 60, "the worker")

    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        # One event loop for both visits: the channel layer's locks belong to the loop.
        communicator = _communicator(chat, cookie)
        assert (await communicator.connect(timeout=10))[0]
        await communicator.receive_json_from(timeout=10)
        await communicator.send_json_to({"type": "ask", "text": "Why prime a pump?"})
        question = cast_dict((await _collect(communicator, "question", timeout=30))[-1])
        await communicator.disconnect()  # the tab is closed before any token
        await asyncio.to_thread(finished, question["answer"]["id"])
        again = _communicator(chat, cookie, after=question["message"]["id"])
        assert (await again.connect(timeout=10))[0]
        history = cast_dict(await again.receive_json_from(timeout=10))
        await again.disconnect()
        await _close_layer()
        return question, history

    question, history = async_to_sync(run)()
    answer_id = question["answer"]["id"]
    assert [m["id"] for m in history["messages"]] == [answer_id]
    missed = history["messages"][0]
    assert missed["status"] in ("complete", "length") and missed["content"]
    assert missed["content"] == Message.objects.get(pk=answer_id).content
    # Its check question too, though no tab was open when the answer finished.
    assert [c["after"] for c in history["checks"]] == [answer_id]


def test_a_dead_worker_gives_an_error_and_the_next_question_works_once_one_is_back(
    channel_layer_on_test_database: None,
    chat: Conversation,
    settings: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings.TUTOR_ANSWER_TOKENS = 400
    channel = f"tutor.inference.dead{os.getpid()}{id(tmp_path) % 100000}"
    monkeypatch.setattr(services, "INFERENCE_CHANNEL", channel)
    worker = start_app_worker(channel, tmp_path / "first.log")
    replacement: list[subprocess.Popen[bytes]] = []
    cookie = _cookie(chat.learner)

    async def run() -> list[Any]:
        communicator = _communicator(chat, cookie)
        assert (await communicator.connect(timeout=10))[0]
        await communicator.receive_json_from(timeout=10)
        await communicator.send_json_to(
            {"type": "ask", "text": "Explain in detail, step by step, how to prime a pump."}
        )
        frames = await _collect(communicator, "token", timeout=60)
        # Tokens flow every 50 ms now: a short silence means a dead worker (reading a prompt
        # on a busy machine could take longer than this, so it is set only now).
        settings.TUTOR_WORKER_SILENCE_SECONDS = 4
        kill_group(worker)  # kill -9 mid-answer
        started = time.monotonic()
        frames += await _collect(communicator, "done", timeout=30)
        frames.append({"type": "waited", "seconds": time.monotonic() - started})
        # A new worker comes up; the student asks again and is answered.
        second = tmp_path / "second.log"
        replacement.append(await asyncio.to_thread(start_app_worker, channel, second))
        settings.TUTOR_ANSWER_TOKENS = 16
        settings.TUTOR_WORKER_SILENCE_SECONDS = 30
        await communicator.send_json_to({"type": "ask", "text": "Why prime a pump?"})
        frames += await _collect(communicator, "done", timeout=60)
        await communicator.disconnect()
        await _close_layer()
        return frames

    try:
        frames = async_to_sync(run)()
    finally:
        kill_group(worker)
        for process in replacement:
            kill_group(process)
    first, second = [f["message"] for f in frames if f["type"] == "done"]
    assert first["status"] == "error"
    assert "stopped responding" in first["error"]
    assert any(f["type"] == "started" for f in frames), "the worker said it took the question"
    waited = next(f["seconds"] for f in frames if f["type"] == "waited")
    assert waited < 4 + 5, "the student hears of it soon after the silence limit"
    assert Message.objects.get(pk=first["id"]).status == "error"
    assert second["status"] in ("complete", "length") and second["content"]


def cast_dict(value: Any) -> dict[str, Any]:
    assert isinstance(value, dict)
    return value


def test_a_question_no_worker_takes_is_failed_with_a_clear_message(
    channel_layer_on_test_database: None,
    chat: Conversation,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings.TUTOR_WORKER_START_SECONDS = 2
    monkeypatch.setattr(services, "INFERENCE_CHANNEL", f"tutor.inference.none{os.getpid()}")
    cookie = _cookie(chat.learner)

    async def run() -> list[Any]:
        communicator = _communicator(chat, cookie)
        assert (await communicator.connect(timeout=10))[0]
        await communicator.receive_json_from(timeout=10)
        await communicator.send_json_to({"type": "ask", "text": "Why prime a pump?"})
        frames = await _collect(communicator, "done", timeout=15)
        await communicator.disconnect()
        await _close_layer()
        return frames

    frames = async_to_sync(run)()
    done = frames[-1]["message"]
    assert done["status"] == "error" and "no language model was free" in done["error"]
    assert Message.objects.get(pk=done["id"]).status == "error"
