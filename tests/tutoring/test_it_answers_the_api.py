"""`POST /api/courses/<slug>/ask/` end to end: a real inference worker process with the real
GGUF model, the real database and retrieval."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from knowledge.models import Course
from tests.conftest import IngestFn, kill_group
from tests.tutoring.conftest import start_app_worker
from tutoring import services
from tutoring.models import Conversation, Message

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "channels_postgres"])

NOTE = (
    b"# Pump care\n\nA centrifugal pump must be primed: its casing is filled with liquid before "
    b"start-up, because the impeller cannot move air. Running a pump dry damages the "
    b"mechanical seal within seconds.\n"
)
ClientFor = Callable[[User | None], APIClient]


@pytest.fixture
def material(course: Course, ingest: IngestFn) -> Course:
    ingest(course, "pumps.md", NOTE)
    return course


@pytest.fixture
def worker(
    channel_layer_on_test_database: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    channel = f"tutor.inference.api{os.getpid()}{id(tmp_path) % 100000}"
    monkeypatch.setattr(services, "INFERENCE_CHANNEL", channel)
    process = start_app_worker(channel, tmp_path / "worker.log")
    yield channel
    kill_group(process)


def _ask(client: APIClient, slug: str, **body: Any) -> Any:
    return client.post(f"/api/courses/{slug}/ask/", body, format="json")


def test_it_answers_with_mode_citations_and_timings(
    worker: str, material: Course, learner: User, client_for: ClientFor, settings: Any
) -> None:
    settings.TUTOR_ANSWER_TOKENS = 32
    client = client_for(learner)
    response = _ask(client, material.slug, question="Why must a pump be primed?", client_id="a1")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] in ("complete", "length") and body["answer"]
    assert body["mode"] in ("foundational", "scaffolded", "advanced")
    assert body["mode_reason"].startswith("pitched as")
    assert body["citations"][0]["filename"] == "pumps.md"
    # "From your course material": verbatim sentences of the cited passages, before the answer.
    assert body["extract"]
    cited = {citation["n"]: citation["text"] for citation in body["citations"]}
    assert all(quote["text"] in cited[quote["n"]] for quote in body["extract"])
    assert "primed" in body["citations"][0]["text"]
    assert body["timings"]["completion_tokens"] > 0 and body["timings"]["ttft_ms"] > 0
    saved = Message.objects.get(conversation_id=body["conversation"], role="assistant")
    assert saved.content == body["answer"]
    # The same client id again: the first answer, nothing asked twice.
    again = _ask(
        client,
        material.slug,
        question="Why must a pump be primed?",
        client_id="a1",
        conversation=body["conversation"],
    )
    assert again.status_code == 200 and again.json()["answer"] == body["answer"]
    assert Message.objects.filter(role="user").count() == 1
    # A follow-up in the same conversation.
    follow = _ask(
        client,
        material.slug,
        question="And what if it runs dry?",
        conversation=body["conversation"],
    )
    assert follow.status_code == 200 and follow.json()["conversation"] == body["conversation"]
    assert Conversation.objects.count() == 1


def test_it_refuses_bad_requests_and_strangers(
    channel_layer_on_test_database: None,
    material: Course,
    learner: User,
    outsider: User,
    client_for: ClientFor,
) -> None:
    client = client_for(learner)
    assert _ask(client_for(None), material.slug, question="hi").status_code in (401, 403)
    assert _ask(client_for(outsider), material.slug, question="hi").status_code == 403
    assert _ask(client, "no-such-course", question="hi").status_code == 404
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({}, 400, "question"),
        ({"question": "   "}, 400, "question"),
        ({"question": 3}, 400, "question"),
        ({"question": "x" * 3000}, 400, "longer than"),
        ({"question": "hi", "conversation": "one"}, 400, "conversation"),
        ({"question": "hi", "conversation": 999999}, 404, "no conversation"),
        ({"question": "hi", "client_id": "c" * 100}, 400, "client_id"),
    ]
    for body, code, words in cases:
        response = _ask(client, material.slug, **body)
        assert response.status_code == code, (body, response.content)
        assert words in response.json()["error"]
    other = Conversation.objects.create(learner=outsider, course=material)
    response = _ask(client, material.slug, question="hi", conversation=other.pk)
    assert response.status_code == 404
    assert not Message.objects.exists()


def test_without_a_worker_it_says_so_instead_of_hanging(
    channel_layer_on_test_database: None,
    material: Course,
    learner: User,
    client_for: ClientFor,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(services, "INFERENCE_CHANNEL", f"tutor.inference.nobody{os.getpid()}")
    settings.TUTOR_ANSWER_SECONDS = 1
    settings.TUTOR_WORKER_SILENCE_SECONDS = 1
    response = _ask(client_for(learner), material.slug, question="Why prime a pump?")
    assert response.status_code == 503
    body = response.json()
    assert "did not answer in time" in body["error"]
    assert Message.objects.get(role="assistant").status == "error"
