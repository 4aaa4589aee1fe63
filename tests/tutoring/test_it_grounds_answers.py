"""Trustworthy answers end to end: the support marks streamed by a real inference worker (the
real GGUF model and embedding model), the "not covered" path and its report, the extract in the
chat and the API, and the extract as check-question feedback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from knowledge.models import Chunk, Course, Skill
from learners.models import Item
from tests.conftest import IngestFn, kill_group
from tests.tutoring.conftest import start_app_worker
from tests.tutoring.test_it_chats_over_the_websocket import (
    ORIGIN,
    _application,
    _close_layer,
    _collect,
    _cookie,
)
from tutoring import checks, services
from tutoring.models import Check, Conversation, Message, UncoveredQuestion

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "channels_postgres"])

NOTE = (
    b"# Pump care\n\n"
    b"A centrifugal pump must be primed: its casing is filled with liquid before start-up, "
    b"because the impeller cannot move air. Running a pump dry damages the mechanical seal "
    b"within seconds. The seal faces are cooled and lubricated by the pumped liquid.\n\n"
    b"## Bolts\n\n"
    b"The casing bolts of the P-100 pump are tightened to 45 N m in a cross pattern. "
    b"A torque wrench is used, and each bolt is checked twice.\n"
)


@pytest.fixture
def worker_channel(
    channel_layer_on_test_database: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    channel = f"tutor.inference.ground{os.getpid()}{id(tmp_path) % 100000}"
    monkeypatch.setattr(services, "INFERENCE_CHANNEL", channel)
    process = start_app_worker(channel, tmp_path / "worker.log")
    yield channel
    kill_group(process)


@pytest.fixture
def material(course: Course, ingest: IngestFn) -> Course:
    ingest(course, "pumps.md", NOTE)
    return course


@pytest.fixture
def chat(material: Course, learner: User) -> Conversation:
    return services.start_conversation(learner=learner, course=material)


def _socket(conversation: Conversation, cookie: tuple[bytes, bytes]) -> WebsocketCommunicator:
    return WebsocketCommunicator(
        _application(), f"/ws/chat/{conversation.pk}/", headers=[ORIGIN, cookie]
    )


def test_sentences_are_marked_as_they_stream_and_saved_with_the_answer(
    worker_channel: str, chat: Conversation, learner: User, settings: Any
) -> None:
    settings.TUTOR_ANSWER_TOKENS = 96
    cookie = _cookie(learner)

    async def run() -> list[Any]:
        communicator = _socket(chat, cookie)
        connected, _ = await communicator.connect(timeout=10)
        assert connected
        await communicator.receive_json_from(timeout=10)  # history
        await communicator.send_json_to(
            {"type": "ask", "text": "Why must a centrifugal pump be primed?", "client_id": "s1"}
        )
        frames = await _collect(communicator, "done", timeout=120)
        await communicator.disconnect()
        await _close_layer()
        return frames

    frames = async_to_sync(run)()
    kinds = [frame["type"] for frame in frames]
    done = frames[-1]["message"]
    marks = [mark for frame in frames if frame["type"] == "support" for mark in frame["marks"]]
    assert marks, f"no support marks arrived: {kinds}"
    # The marks come as sentences complete, between token frames: streaming stays live.
    first_mark = kinds.index("support")
    assert "token" in kinds[first_mark + 1 :], kinds
    for mark in marks:
        assert isinstance(mark["supported"], bool) and 0.0 <= mark["score"] <= 1.0
        assert mark["sentence"].split("[")[0].strip()[:20] in done["content"]
    # Saved with the answer, in the done frame and in the database.
    assert done["support"] == marks
    assert done["not_found"] == [m["sentence"] for m in marks if not m["supported"]]
    saved = Message.objects.get(pk=done["id"])
    assert saved.support == marks
    # The extract opens the answer: verbatim sentences of the cited passages.
    assert done["extract"]
    cited = {citation["n"]: citation["text"] for citation in done["citations"]}
    assert all(quote["text"] in cited[quote["n"]] for quote in done["extract"])


def test_the_worker_marks_an_invented_figure_and_keeps_a_copied_sentence(
    material: Course,
) -> None:
    """The worker's judge (tutoring.hooks.judge_sentences) on sentences as the model might
    write them, with the passage's stored sentence vectors."""
    from tutoring.hooks import judge_sentences

    chunk = Chunk.objects.get(document__course=material, text__contains="45 N m")
    passages = [{"text": chunk.text, "chunk": chunk.pk}]
    marks = judge_sentences(
        passages,
        [
            "The casing bolts of the P-100 pump are tightened to 45 N m in a cross pattern.",
            "The casing bolts of the P-100 pump are tightened to 90 N m in a cross pattern.",
        ],
    )
    assert [mark["supported"] for mark in marks] == [True, False]
    assert marks[1]["missing_figures"] == ["90 n"]
    # The passage sentence it comes closest to, shown beside it for the learner to compare.
    assert marks[1]["closest"].startswith("The casing bolts of the P-100 pump are tightened to 45")


def test_the_worker_judges_a_bare_answer_against_the_learners_question(
    chat: Conversation,
    material: Course,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    """The request carries the question to the worker, whose judge reads "No." as the answer to
    it: supported where the passage nearest the question says not."""
    from tutoring import inference
    from tutoring.hooks import judge_sentences

    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(services, "send_to_worker", sent.append)
    question = "Can I start the pump without priming it, if I am quick?"
    with django_capture_on_commit_callbacks(execute=True):
        services.ask(conversation=chat, question=question, client_id="bare-answer")
    request = inference.Request.parse(sent[0], 2048)
    assert request.question == question
    assert request.passages
    marks = judge_sentences(request.passages, ["No.", "Yes."], request.question)
    assert [(m["sentence"], m["supported"]) for m in marks] == [("No.", True), ("Yes.", False)]
    assert judge_sentences(request.passages, ["No."]) == []  # no question: nothing to judge
    with pytest.raises(inference.RequestError, match="question must be a str"):
        inference.Request.parse({**sent[0], "question": 7}, 2048)


def test_a_question_outside_the_material_is_not_answered_by_the_model(
    channel_layer_on_test_database: None,
    chat: Conversation,
    learner: User,
    instructor: User,
    material: Course,
) -> None:
    """No worker runs here at all: the tutor answers from the material's coverage alone."""
    cookie = _cookie(learner)

    async def ask(text: str, client_id: str) -> list[Any]:
        communicator = _socket(chat, cookie)
        connected, _ = await communicator.connect(timeout=10)
        assert connected
        await communicator.receive_json_from(timeout=10)
        await communicator.send_json_to({"type": "ask", "text": text, "client_id": client_id})
        frames = await _collect(communicator, "done", timeout=10)
        await communicator.disconnect()
        await _close_layer()
        return frames

    frames = async_to_sync(ask)("What is the capital of Peru?", "p1")
    assert [frame["type"] for frame in frames] == ["question", "done"]
    done = frames[-1]["message"]
    assert done["covered"] is False and done["status"] == "complete"
    assert done["content"] == services.NOT_COVERED
    assert done["citations"] and done["citations"][0]["filename"] == "pumps.md"
    saved = Message.objects.get(pk=done["id"])
    assert saved.completion_tokens == 0 and saved.ttft_ms is None  # no model output
    report = UncoveredQuestion.objects.get(course=material)
    assert report.question == "What is the capital of Peru?" and report.times_asked == 1
    assert report.closest.startswith("pumps.md") and report.closeness is not None

    # Asked again (other words of case and spacing): the same row counts up.
    async_to_sync(ask)("what is the  capital of peru?", "p2")
    report.refresh_from_db()
    assert report.times_asked == 2
    assert UncoveredQuestion.objects.count() == 1

    # The instructors' report in the back office.
    client = Client()
    client.force_login(instructor)
    page = client.get("/admin/tutoring/uncoveredquestion/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "What is the capital of Peru?" in text and "pumps.md" in text


def test_the_api_says_when_the_material_does_not_cover_a_question(
    channel_layer_on_test_database: None, material: Course, learner: User
) -> None:
    client = APIClient()
    client.force_authenticate(learner)
    response = client.post(
        f"/api/courses/{material.slug}/ask/",
        {"question": "Who won the football world cup in 2018?"},
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["covered"] is False and body["answer"] == services.NOT_COVERED
    assert body["support"] == [] and body["not_found"] == []
    assert body["citations"]
    assert UncoveredQuestion.objects.filter(course=material).count() == 1


def _pump_turn(chat: Conversation) -> None:
    """A question on the material and its answer, for the next question to follow."""
    Message.objects.create(
        conversation=chat, role=Message.Role.USER, content="Why must a pump be primed?"
    )
    Message.objects.create(
        conversation=chat, role=Message.Role.ASSISTANT, content="Because of the impeller [1]."
    )


def test_a_follow_up_counts_as_covered_by_the_question_before_it(
    channel_layer_on_test_database: None, chat: Conversation, material: Course
) -> None:
    _pump_turn(chat)
    asked = services.ask(conversation=chat, question="Why is that?")
    assert asked.answer.covered and asked.answer.status == Message.Status.PENDING
    fresh = services.start_conversation(learner=chat.learner, course=material)
    alone = services.ask(conversation=fresh, question="Why is that?")
    assert not alone.answer.covered


def test_a_new_question_on_another_subject_is_judged_alone(
    channel_layer_on_test_database: None, chat: Conversation
) -> None:
    _pump_turn(chat)
    asked = services.ask(conversation=chat, question="What is the capital of Peru?")
    assert not asked.answer.covered
    assert asked.answer.content == services.NOT_COVERED
    assert UncoveredQuestion.objects.get().question == "What is the capital of Peru?"


@pytest.mark.parametrize(
    ("question", "follows"),
    [
        ("Why is that?", True),
        ("And if it runs dry?", True),
        ("What about the second step?", True),
        ("Really?", True),
        ("What is the capital of Peru?", False),
        ("Why is the sky blue?", False),
        ("Who won the football world cup in 2018?", False),
    ],
)
def test_a_follow_up_points_back_or_says_almost_nothing_of_its_own(
    question: str, follows: bool
) -> None:
    assert services.follows_on(question) is follows


def test_a_graded_check_question_quotes_the_material(chat: Conversation, material: Course) -> None:
    skill = Skill.objects.create(course=material, name="Pump Priming")
    item = Item.objects.create(
        course=material,
        skill=skill,
        stem="What must fill the casing before a centrifugal pump starts?",
        choices=["Air", "Liquid", "Grease"],
        answer="Liquid",
        status=Item.Status.APPROVED,
    )
    answer = Message.objects.create(
        conversation=chat, role=Message.Role.ASSISTANT, content="…", skill=skill
    )
    check = Check.objects.create(conversation=chat, after=answer, item=item)
    check = services.start_check_response(check=check, learner=chat.learner, response="Air")
    graded = services.finish_check(check=check, grade=checks.grade_choice(item, "Air"))
    shown = services.check_json(graded)
    assert shown["correct"] is False
    assert shown["extract"], "the feedback quotes the material"
    assert "casing is filled with liquid" in shown["extract"][0]["text"]
    assert shown["extract"][0]["filename"] == "pumps.md"
