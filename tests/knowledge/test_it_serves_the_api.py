"""The API for scripts: token and session auth, upload, progress, search, roles."""

from __future__ import annotations

import io
from collections.abc import Callable

from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from knowledge import ingestion
from knowledge.models import Course, Document

NOTE = b"# Pump seals\n\nA mechanical seal stops the pumped liquid leaking along the shaft.\n"


def test_it_accepts_a_drf_token_made_by_the_command(course: Course, instructor: User) -> None:
    out = io.StringIO()
    call_command("drf_create_token", instructor.username, stdout=out)
    token = Token.objects.get(user=instructor).key
    assert token in out.getvalue()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    response = client.get("/api/courses/")
    assert response.status_code == 200
    assert [row["slug"] for row in response.json()] == [course.slug]


def test_it_refuses_anonymous_callers(course: Course) -> None:
    response = APIClient().get(f"/api/courses/{course.slug}/search", {"q": "seal"})
    assert response.status_code in (401, 403)


def test_it_uploads_and_reports_progress_until_ready(
    course: Course, instructor: User, client_for: Callable[[User | None], APIClient]
) -> None:
    client = client_for(instructor)
    upload = SimpleUploadedFile("seals.md", NOTE, content_type="text/markdown")
    response = client.post(f"/api/courses/{course.slug}/documents/", {"file": upload})
    assert response.status_code == 202
    [created] = response.json()
    assert created["status"] == "pending"
    assert created["progress"] == 0
    assert created["duplicate"] is False

    ingestion.ingest_document(created["id"])  # what the cluster does
    detail = client.get(f"/api/documents/{created['id']}/").json()
    assert detail["status"] == "ready"
    assert detail["progress"] == 1
    assert detail["chunks_done"] == detail["chunks_total"] >= 1
    listing = client.get(f"/api/courses/{course.slug}/documents/").json()
    assert [row["original_filename"] for row in listing] == ["seals.md"]

    hits = client.get(f"/api/courses/{course.slug}/search", {"q": "what stops leaks at the shaft"})
    assert hits.status_code == 200
    assert hits.json()["results"][0]["filename"] == "seals.md"


def test_it_uploads_several_files_in_one_request(
    course: Course, instructor: User, client_for: Callable[[User | None], APIClient]
) -> None:
    files = [
        SimpleUploadedFile("a.md", b"# A\n\nFirst note about impellers.\n"),
        SimpleUploadedFile("b.txt", b"Second note about volutes and casings.\n"),
    ]
    response = client_for(instructor).post(
        f"/api/courses/{course.slug}/documents/", {"file": files}
    )
    assert response.status_code == 202
    assert sorted(row["original_filename"] for row in response.json()) == ["a.md", "b.txt"]
    assert Document.objects.filter(course=course).count() == 2


def test_it_hides_documents_from_learners_and_outsiders(
    course: Course,
    instructor: User,
    learner: User,
    outsider: User,
    client_for: Callable[[User | None], APIClient],
) -> None:
    upload = SimpleUploadedFile("seals.md", NOTE)
    created = client_for(instructor).post(
        f"/api/courses/{course.slug}/documents/", {"file": upload}
    )
    document_id = created.json()[0]["id"]
    for user in (learner, outsider):
        client = client_for(user)
        assert client.get(f"/api/documents/{document_id}/").status_code == 403
        assert client.get(f"/api/courses/{course.slug}/documents/").status_code == 403
    assert client_for(outsider).get("/api/courses/").json() == [
        {"slug": "other-course", "title": "Other course", "description": ""}
    ]


def test_it_answers_404_for_an_unknown_course(
    instructor: User, client_for: Callable[[User | None], APIClient]
) -> None:
    response = client_for(instructor).get("/api/courses/no-such-course/search", {"q": "x"})
    assert response.status_code == 404


def test_it_validates_k(
    course: Course, learner: User, client_for: Callable[[User | None], APIClient]
) -> None:
    client = client_for(learner)
    for bad in ("abc", "0", "51"):
        response = client.get(f"/api/courses/{course.slug}/search", {"q": "seal", "k": bad})
        assert response.status_code == 400
        assert "k" in str(response.json())
