"""A course's material never comes back for another course: function, API or command."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from rest_framework.test import APIClient

from knowledge import retrieval, services
from knowledge.models import Course, Enrollment
from tests.conftest import IngestFn

CANARY = "The quillwort valve must be purged with argon for exactly 17 minutes."
CANARY_QUESTION = "How long is the quillwort valve purged with argon?"


@pytest.fixture
def two_courses(course: Course, ingest: IngestFn) -> tuple[Course, Course]:
    other = services.create_course(slug="turbines-201", title="Turbines 201")
    ingest(course, "secret.md", f"# Valves\n\n{CANARY} Nobody else needs to know.\n".encode())
    ingest(
        other,
        "turbines.md",
        b"# Turbines\n\nA steam turbine converts the energy of steam into rotation. "
        b"Blades are inspected for erosion every outage. Valves on the steam line are "
        b"checked for leaks before start-up.\n",
    )
    return course, other


def test_it_finds_the_canary_in_its_own_course(two_courses: tuple[Course, Course]) -> None:
    owner, _ = two_courses
    hits = retrieval.search(owner, CANARY_QUESTION, k=5)
    assert any("quillwort" in hit.text for hit in hits)


def test_it_never_returns_the_canary_for_another_course(two_courses: tuple[Course, Course]) -> None:
    _, other = two_courses
    for k in (1, 5, 50):
        hits = retrieval.search(other, CANARY_QUESTION, k=k)
        assert hits, "the other course has material, so something comes back"
        assert all("quillwort" not in hit.text for hit in hits)
        assert {hit.filename for hit in hits} == {"turbines.md"}


def test_it_keeps_the_canary_out_of_the_api(
    two_courses: tuple[Course, Course], client_for: Callable[[User | None], APIClient]
) -> None:
    _, other = two_courses
    member = User.objects.create_user("tina-turbines", password="x")
    services.enroll(course=other, user=member, role=Enrollment.Role.LEARNER)
    response = client_for(member).get(
        f"/api/courses/{other.slug}/search", {"q": CANARY_QUESTION, "k": "50"}
    )
    assert response.status_code == 200
    texts = [hit["text"] for hit in response.json()["results"]]
    assert texts
    assert not any("quillwort" in text for text in texts)


def test_it_refuses_search_in_a_course_the_user_is_not_in(
    two_courses: tuple[Course, Course], client_for: Callable[[User | None], APIClient]
) -> None:
    owner, other = two_courses
    member = User.objects.create_user("tina-turbines", password="x")
    services.enroll(course=other, user=member, role=Enrollment.Role.LEARNER)
    response = client_for(member).get(f"/api/courses/{owner.slug}/search", {"q": "argon"})
    assert response.status_code == 403
    assert "member" in response.json()["error"]


def test_it_keeps_the_canary_out_of_the_command(two_courses: tuple[Course, Course]) -> None:
    owner, other = two_courses
    out = io.StringIO()
    call_command("search", CANARY_QUESTION, course=other.slug, k=50, stdout=out)
    hits = [json.loads(line) for line in out.getvalue().splitlines()]
    assert hits
    assert all("quillwort" not in hit["text"] for hit in hits)
    assert set(hits[0]) == {"document", "filename", "locator", "score", "text"}

    out = io.StringIO()
    call_command("search", CANARY_QUESTION, course=owner.slug, k=1, stdout=out)
    assert "quillwort" in json.loads(out.getvalue())["text"]
