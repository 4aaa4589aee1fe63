"""Instructors manage their own courses in the admin and see nothing of other courses."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from knowledge import ingestion
from knowledge.models import ChunkSkill, Course, Document, Skill
from tests.conftest import IngestFn


def _client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_it_uploads_several_files_from_the_admin(course: Course, instructor: User) -> None:
    client = _client(instructor)
    page = client.get("/admin/knowledge/document/upload/")
    assert page.status_code == 200
    assert b"multiple" in page.content
    response = client.post(
        "/admin/knowledge/document/upload/",
        {
            "course": course.pk,
            "documents": [
                SimpleUploadedFile("one.md", b"# One\n\nImpellers move the liquid outwards.\n"),
                SimpleUploadedFile("two.txt", b"Casings collect the liquid and slow it down.\n"),
            ],
        },
    )
    assert response.status_code == 302
    names = sorted(
        Document.objects.filter(course=course).values_list("original_filename", flat=True)
    )
    assert names == ["one.md", "two.txt"]
    listing = client.get(response["Location"])
    assert b"one.md" in listing.content and b"doc-progress" in listing.content


def test_it_shows_an_instructor_only_their_courses(
    course: Course, instructor: User, outsider: User, ingest: IngestFn
) -> None:
    document = ingest(course, "ours.md", b"# Ours\n\nOnly our course has this text.\n")
    own = _client(instructor).get("/admin/knowledge/document/")
    assert b"ours.md" in own.content

    other = _client(outsider)
    assert b"ours.md" not in other.get("/admin/knowledge/document/").content
    assert other.get(f"/admin/knowledge/document/{document.pk}/change/").status_code in (
        302,
        403,
        404,
    )
    assert other.get(f"/admin/knowledge/course/{course.pk}/change/").status_code in (302, 403, 404)
    chunk = document.chunks.first()
    assert chunk is not None
    assert other.get(f"/admin/knowledge/chunk/{chunk.pk}/change/").status_code in (302, 403, 404)
    # Nor can they upload into it.
    response = other.post(
        "/admin/knowledge/document/upload/",
        {"course": course.pk, "documents": [SimpleUploadedFile("x.md", b"# X\n\nsneaky\n")]},
    )
    assert response.status_code == 200  # the form refuses the course choice
    assert not Document.objects.filter(original_filename="x.md").exists()


def test_it_keeps_learners_out_of_the_back_office(course: Course, learner: User) -> None:
    response = _client(learner).get("/admin/knowledge/document/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_it_lets_the_instructor_correct_skill_links(
    course: Course, instructor: User, ingest: IngestFn
) -> None:
    seals = Skill.objects.create(course=course, name="Seals", description="Mechanical seals")
    document = ingest(
        course, "seals.md", b"# Seals\n\nA mechanical seal stops leaks at the shaft.\n"
    )
    chunk = document.chunks.get()
    ChunkSkill.objects.filter(chunk=chunk).delete()
    client = _client(instructor)
    response = client.post(
        f"/admin/knowledge/chunk/{chunk.pk}/change/",
        {
            "skill_links-TOTAL_FORMS": "1",
            "skill_links-INITIAL_FORMS": "0",
            "skill_links-MIN_NUM_FORMS": "0",
            "skill_links-MAX_NUM_FORMS": "1000",
            "skill_links-0-skill": seals.pk,
            "skill_links-0-chunk": chunk.pk,
        },
    )
    assert response.status_code == 302, response.content[:2000]
    link = ChunkSkill.objects.get(chunk=chunk, skill=seals)
    assert link.source == ChunkSkill.Source.INSTRUCTOR
    # Re-tagging recomputes automatic links but keeps the instructor's.
    from knowledge import services

    services.tag_chunks(course=course)
    assert ChunkSkill.objects.filter(chunk=chunk, skill=seals, source="instructor").exists()


def test_it_reindexes_from_the_admin(course: Course, instructor: User, ingest: IngestFn) -> None:
    document = ingest(course, "pumps.md", b"# Pumps\n\nCentrifugal pumps need priming.\n")
    client = _client(instructor)
    response = client.post(
        "/admin/knowledge/document/",
        {"action": "reindex", "_selected_action": [document.pk]},
    )
    assert response.status_code == 302
    document.refresh_from_db()
    assert document.status == Document.Status.PENDING
    assert document.chunks.count() == 0
    ingestion.ingest_document(document.pk)
    document.refresh_from_db()
    assert document.status == Document.Status.READY and document.chunks.count() == 1


def test_it_deletes_from_the_admin(course: Course, instructor: User, ingest: IngestFn) -> None:
    document = ingest(course, "pumps.md", b"# Pumps\n\nCentrifugal pumps need priming.\n")
    response = _client(instructor).post(
        "/admin/knowledge/document/",
        {"action": "delete_documents", "_selected_action": [document.pk]},
    )
    assert response.status_code == 302
    assert not Document.objects.filter(pk=document.pk).exists()
