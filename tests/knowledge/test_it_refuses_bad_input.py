"""Bad input is refused with a message the instructor can act on, is logged, and harms nothing:
the bad document ends `failed` with its reason, every other document and passage stays as it
was, and the next good document is ingested as usual."""

from __future__ import annotations

import io
import logging
import pathlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.files.uploadhandler import MemoryFileUploadHandler, TemporaryFileUploadHandler
from django.core.management import CommandError, call_command
from django.test import override_settings
from rest_framework.test import APIClient

import knowledge.parsers.docx
import knowledge.parsers.markdown
from knowledge import ingestion, services
from knowledge.models import Chunk, Course, Document
from knowledge.uploads import SizeLimitUploadHandler
from tests.knowledge import files

Snapshot = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]

GOOD_BEFORE = b"""# Impeller Wear

Worn impeller vanes lower the head a pump can deliver at a given flow.
Measure the clearance between impeller and wear ring at every overhaul.
"""
GOOD_AFTER = b"""# Coupling Guards

A coupling guard must be refitted before the pump is started again.
Guards are painted yellow so that a missing one is seen from a distance.
"""


def snapshot(*, leave_out: int | None = None) -> Snapshot:
    """Every document and passage in the database (the demo course's included)."""
    documents = Document.objects.order_by("pk")
    chunks = Chunk.objects.order_by("pk")
    if leave_out is not None:
        documents, chunks = documents.exclude(pk=leave_out), chunks.exclude(document=leave_out)
    return (
        list(
            documents.values_list("pk", "status", "error", "title", "chunks_total", "content_hash")
        ),
        list(chunks.values_list("pk", "document_id", "ordinal", "text", "locator")),
    )


def add_and_ingest(course: Course, filename: str, data: bytes) -> tuple[str, Document]:
    result = services.add_document(
        course=course, filename=filename, content=ContentFile(data, name=filename)
    )
    outcome = ingestion.ingest_document(result.document.pk)
    result.document.refresh_from_db()
    return outcome, result.document


def warnings_about(caplog: pytest.LogCaptureFixture, *needles: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.WARNING
        and all(needle in record.getMessage() for needle in needles)
    ]


@pytest.fixture
def settled(course: Course) -> Snapshot:
    """A course with one good document already ingested; returns the state before the test."""
    outcome, document = add_and_ingest(course, "impeller-wear.md", GOOD_BEFORE)
    assert outcome == Document.Status.READY, document.error
    return snapshot()


def assert_still_works(course: Course, before: Snapshot, *, leave_out: int | None) -> None:
    """Nothing else changed, and a good document is still ingested afterwards."""
    assert snapshot(leave_out=leave_out) == before
    outcome, later = add_and_ingest(course, "coupling-guards.md", GOOD_AFTER)
    assert outcome == Document.Status.READY, later.error
    assert later.chunks.filter(text__contains="refitted before the pump is started").exists()


def stored_files() -> set[Path]:
    """Every uploaded file kept in media storage (files outlive the test's transaction)."""
    folder = Path(settings.MEDIA_ROOT) / "documents"
    return {path for path in folder.rglob("*") if path.is_file()}


# --- Files that cannot be ingested -------------------------------------------------------


def _good_pdf() -> bytes:
    return files.pdf_bytes(
        [["Check the pump base bolts for cracks and loose nuts every quarter."]] * 3,
        title="Base bolts",
    )


@dataclass(frozen=True)
class Bad:
    filename: str
    build: Callable[[], bytes]
    message: str  # a regular expression the document's error must match


BAD_FILES: dict[str, Bad] = {
    "empty file": Bad("empty.md", lambda: b"", r"^the file is empty$"),
    "only blank lines": Bad("blank.txt", lambda: b" \n\n\t\r\n  \n", r"^the file is empty$"),
    "a PDF named .docx": Bad(
        "seals.docx", _good_pdf, r"does not match its \.docx extension \(it looks like a PDF\)"
    ),
    "a PNG named .md": Bad(
        "seals.md", files.png_bytes, r"does not match its \.md extension \(it looks like a PNG"
    ),
    "a zip named .pdf": Bad(
        "seals.pdf",
        lambda: files.zip_bytes({"readme.txt": b"hello"}),
        r"does not match its \.pdf extension \(it looks like a zip archive",
    ),
    "a DOCX named .html": Bad(
        "seals.html",
        lambda: files.docx_bytes([("Normal", "Seals keep the liquid in.")]),
        r"does not match its \.html extension \(it looks like a zip archive",
    ),
    "binary bytes named .txt": Bad(
        "seals.txt",
        lambda: b"seal data\x00\x01\x02\x03" * 20,
        r"binary, not plain text",
    ),
    "a truncated PDF": Bad(
        "truncated.pdf", lambda: _good_pdf()[: len(_good_pdf()) // 2], r"PDF is corrupt"
    ),
    "a garbled PDF": Bad(
        "garbled.pdf",
        lambda: b"%PDF-1.7\n" + bytes(range(256)) * 16 + b"\n%%EOF\n",
        r"PDF is corrupt",
    ),
    "a password-protected PDF": Bad(
        "locked.pdf",
        lambda: files.pdf_bytes(
            [["The pump curve for the new booster set is confidential."]],
            owner_password="owner-secret",
            user_password="reader-secret",
        ),
        r"encrypted \(password protected\)",
    ),
    "a PDF without a text layer": Bad(
        "scan.pdf", files.pdf_without_text, r"^no extractable text.*\(a scan\?\); run OCR"
    ),
    "a zip named .docx that is not Word": Bad(
        "notes.docx",
        lambda: files.zip_bytes({"notes/readme.txt": b"Seals keep the liquid in."}),
        r"zip archive but not a Word document",
    ),
    "a broken zip named .docx": Bad(
        "broken.docx",
        lambda: b"PK\x03\x04" + b"\x00garbage" * 64,
        r"DOCX file is corrupt",
    ),
    "HTML without markup": Bad(
        "page.html", lambda: b"Just a sentence about pumps, no markup.", r"no HTML markup"
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES.values()), ids=list(BAD_FILES))
def test_it_fails_a_bad_file_with_its_reason_and_harms_nothing(
    course: Course, settled: Snapshot, caplog: pytest.LogCaptureFixture, case: Bad
) -> None:
    with caplog.at_level(logging.INFO, logger="knowledge"):
        outcome, document = add_and_ingest(course, case.filename, case.build())

    assert outcome == Document.Status.FAILED  # reported, not raised
    assert document.status == Document.Status.FAILED
    assert pytest.approx(0) == document.progress()
    assert document.error
    assert re.search(case.message, document.error), document.error
    assert not document.error.startswith("internal error"), document.error
    assert document.chunks.count() == 0
    assert warnings_about(caplog, case.filename, document.error)
    assert_still_works(course, settled, leave_out=document.pk)


def test_it_tells_the_instructor_why_a_document_failed(
    course: Course, instructor: User, client_for: Callable[[User | None], APIClient]
) -> None:
    outcome, document = add_and_ingest(
        course, "locked.pdf", BAD_FILES["a password-protected PDF"].build()
    )
    assert outcome == Document.Status.FAILED

    response = client_for(instructor).get(f"/api/documents/{document.pk}/")

    assert response.status_code == 200
    assert response.json()["status"] == "failed"
    error = response.json()["error"].lower()
    assert "encrypted" in error and "password" in error


def test_it_opens_a_pdf_with_only_an_owner_password(course: Course, ingest: Any) -> None:
    """Encryption that restricts editing but not reading is not a reason to refuse."""
    data = files.pdf_bytes(
        [["Booster pumps start one after another to limit the inrush current."]],
        owner_password="owner-secret",
    )
    document = ingest(course, "booster.pdf", data)
    assert document.status == Document.Status.READY, document.error
    assert document.chunks.filter(text__contains="limit the inrush current").count() == 1


def test_it_survives_an_unexpected_parser_crash(
    course: Course,
    settled: Snapshot,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_parse = knowledge.parsers.markdown.parse

    def crash(data: bytes, **kwargs: Any) -> Any:
        if b"crash" in data:
            raise RuntimeError("parser blew up")
        return real_parse(data, **kwargs)

    monkeypatch.setattr(knowledge.parsers.markdown, "parse", crash)
    with caplog.at_level(logging.INFO, logger="knowledge"):
        outcome, document = add_and_ingest(course, "crash.md", b"# Crash\n\nThis will crash.\n")

    assert outcome == Document.Status.FAILED
    assert document.error == "internal error while ingesting: RuntimeError: parser blew up"
    assert any(
        record.levelno == logging.ERROR and "crash.md" in record.getMessage()
        for record in caplog.records
    )
    assert_still_works(course, settled, leave_out=document.pk)


# --- DOCX archives checked before they are opened ------------------------------------------


def forbid_python_docx(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """From now on, record (and fail) any call that reaches python-docx."""
    calls: list[Any] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise AssertionError("python-docx was asked to open an archive over the limits")

    monkeypatch.setattr(knowledge.parsers.docx.docx, "Document", spy)
    return calls


DOCX_SMALL = [("Heading 1", "Seals"), ("Normal", "Seals keep the liquid inside the pump.")]


@pytest.mark.parametrize(
    ("limits", "build", "message"),
    [
        pytest.param(
            {"TUTOR_DOCX_MAX_ENTRIES": 5},
            lambda: files.docx_bytes(DOCX_SMALL),
            r"^the DOCX archive has \d+ entries, over the limit of 5$",
            id="too many entries",
        ),
        pytest.param(
            {"TUTOR_DOCX_MAX_UNCOMPRESSED_BYTES": 50_000},
            lambda: files.docx_bytes(DOCX_SMALL),
            r"^the DOCX archive would inflate to [\d,]+ bytes, over the limit of 50,000$",
            id="inflates over the limit",
        ),
        pytest.param(
            {},
            lambda: files.zip_declaring_huge_size(3_000_000_000),
            r"^the DOCX archive would inflate to 3,000,000,\d{3} bytes, over the limit of "
            r"209,715,200$",
            id="directory declares 3 GB",
        ),
    ],
)
def test_it_refuses_a_docx_over_the_zip_limits_before_opening_it(
    course: Course,
    settled: Snapshot,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    limits: dict[str, int],
    build: Callable[[], bytes],
    message: str,
) -> None:
    data = build()
    docx_calls = forbid_python_docx(monkeypatch)
    with override_settings(**limits), caplog.at_level(logging.INFO, logger="knowledge"):
        outcome, document = add_and_ingest(course, "bomb.docx", data)

    assert outcome == Document.Status.FAILED
    assert re.search(message, document.error), document.error
    assert docx_calls == []
    assert warnings_about(caplog, "bomb.docx", "over the limit")
    assert_still_works(course, settled, leave_out=document.pk)


def test_it_opens_a_docx_within_the_zip_limits(course: Course, ingest: Any) -> None:
    document = ingest(course, "seals.docx", files.docx_bytes(DOCX_SMALL))
    assert document.status == Document.Status.READY, document.error


# --- Uploads over the size limit ---------------------------------------------------------


@pytest.fixture
def stored_bytes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes that reached the handlers that keep an upload (memory or temporary file)."""
    received: list[int] = []
    for handler in (MemoryFileUploadHandler, TemporaryFileUploadHandler):
        original = handler.receive_data_chunk

        def spy(self: Any, raw_data: bytes, start: int, _original: Any = original) -> Any:
            received.append(len(raw_data))
            return _original(self, raw_data, start)

        monkeypatch.setattr(handler, "receive_data_chunk", spy)
    return received


@override_settings(TUTOR_MAX_UPLOAD_BYTES=4_000)
def test_it_refuses_an_api_upload_over_the_size_limit_while_it_streams(
    course: Course,
    instructor: User,
    client_for: Callable[[User | None], APIClient],
    caplog: pytest.LogCaptureFixture,
    stored_bytes: list[int],
) -> None:
    big = b"Pumps need care. " * 12_000  # about 200 KB, several upload chunks
    before, files_before = snapshot(), stored_files()
    with caplog.at_level(logging.INFO):
        response = client_for(instructor).post(
            f"/api/courses/{course.slug}/documents/",
            {"file": SimpleUploadedFile("big-manual.txt", big)},
            format="multipart",
        )

    assert response.status_code == 413, response.content
    assert response.json()["error"] == "over the upload limit of 4,000 bytes: big-manual.txt"
    assert snapshot() == before
    assert not Document.objects.filter(course=course).exists()
    assert stored_files() == files_before
    assert sum(stored_bytes) <= settings.TUTOR_MAX_UPLOAD_BYTES  # dropped, never kept whole
    assert warnings_about(caplog, "big-manual.txt")
    assert warnings_about(caplog, "413", "over the upload limit")


@override_settings(TUTOR_MAX_UPLOAD_BYTES=4_000)
def test_it_refuses_an_api_upload_declared_too_big_without_reading_it(
    course: Course,
    instructor: User,
    client_for: Callable[[User | None], APIClient],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handled: list[str] = []
    monkeypatch.setattr(
        SizeLimitUploadHandler, "new_file", lambda self, *a, **k: handled.append("read")
    )
    before, files_before = snapshot(), stored_files()
    with caplog.at_level(logging.INFO):
        response = client_for(instructor).post(
            f"/api/courses/{course.slug}/documents/",
            {"file": SimpleUploadedFile("manual.txt", b"Pumps need care.")},
            format="multipart",
            CONTENT_LENGTH=str(5 * 1024**3),
        )

    assert response.status_code == 413, response.content
    assert response.json()["error"] == (
        "the upload of 5,368,709,120 bytes is over the limit of 4,000 bytes"
    )
    assert handled == []  # the body was never parsed
    assert snapshot() == before
    assert stored_files() == files_before
    assert warnings_about(caplog, "413", "5,368,709,120")


@pytest.fixture
def huge_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An 8 GiB sparse file (no disk used) that fails the test if anything opens it."""
    path = tmp_path / "plant-archive.pdf"
    with path.open("wb") as handle:
        handle.truncate(8 * 1024**3)
    real_open = pathlib.Path.open

    def guarded_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == path:
            raise AssertionError(f"{path} was opened")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", guarded_open)
    return path


def test_it_refuses_a_file_over_the_size_limit_in_the_ingest_command(
    course: Course,
    huge_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = tmp_path / "guards.md"
    good.write_bytes(GOOD_AFTER)
    before, files_before = snapshot(), stored_files()
    stdout, stderr = io.StringIO(), io.StringIO()

    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as exit_info:
        call_command(
            "ingest",
            str(huge_file),
            str(good),
            course=course.slug,
            sync=True,
            stdout=stdout,
            stderr=stderr,
        )

    assert exit_info.value.code == 1
    message = "plant-archive.pdf: 8,589,934,592 bytes is over the upload limit of 52,428,800 bytes"
    assert message in stderr.getvalue()
    assert warnings_about(caplog, message)
    assert '"refused": 1' in stdout.getvalue()
    # The good file of the same run is ingested; the huge one left no trace.
    documents = list(Document.objects.filter(course=course))
    assert [doc.original_filename for doc in documents] == ["guards.md"]
    assert documents[0].status == Document.Status.READY
    assert snapshot(leave_out=documents[0].pk) == before
    [new_file] = stored_files() - files_before
    assert new_file.name.startswith("guards") and new_file.suffix == ".md"


def test_it_exits_non_zero_when_the_ingest_command_refuses_a_file(
    course: Course, huge_file: Path, tmp_path: Path
) -> None:
    stderr = io.StringIO()
    with pytest.raises((SystemExit, CommandError)) as exit_info:
        call_command("ingest", str(huge_file), course=course.slug, stderr=stderr)

    assert getattr(exit_info.value, "code", 1) == 1
    assert "over the upload limit" in stderr.getvalue()
    assert not Document.objects.filter(course=course).exists()


def test_it_refuses_an_unsupported_file_type(
    course: Course,
    instructor: User,
    client_for: Callable[[User | None], APIClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    before, files_before = snapshot(), stored_files()
    with caplog.at_level(logging.INFO):
        response = client_for(instructor).post(
            f"/api/courses/{course.slug}/documents/",
            {"file": SimpleUploadedFile("pump-tool.exe", b"MZ\x90\x00" + b"\x00" * 200)},
            format="multipart",
        )

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error.startswith("pump-tool.exe: unsupported file type; supported: ")
    assert ".pdf" in error and ".docx" in error and ".md" in error
    assert warnings_about(caplog, "400", "unsupported file type")
    assert snapshot() == before
    assert stored_files() == files_before
    with pytest.raises(services.KnowledgeError, match="unsupported file type") as refused:
        services.add_document(
            course=course, filename="pump-tool.exe", content=ContentFile(b"MZ", name="x.exe")
        )
    assert refused.value.status == 400


# --- Who may upload ------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["outsider", "learner", "anonymous"])
def test_it_lets_only_the_course_instructors_upload(
    request: pytest.FixtureRequest,
    course: Course,
    client_for: Callable[[User | None], APIClient],
    caplog: pytest.LogCaptureFixture,
    who: str,
) -> None:
    user: User | None = None if who == "anonymous" else request.getfixturevalue(who)
    before, files_before = snapshot(), stored_files()
    with caplog.at_level(logging.INFO):
        response = client_for(user).post(
            f"/api/courses/{course.slug}/documents/",
            {"file": SimpleUploadedFile("notes.md", GOOD_AFTER)},
            format="multipart",
        )

    assert response.status_code in ((401, 403) if who == "anonymous" else (403,)), response.content
    expected = (
        "Authentication credentials were not provided."
        if who == "anonymous"
        else "only the course's instructors may do this"
    )
    assert response.json() == {"error": expected}
    assert warnings_about(caplog, f"refused with {response.status_code}")
    assert snapshot() == before
    assert stored_files() == files_before


# --- Searches that cannot be run -------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "   "])
def test_it_refuses_an_empty_search(
    course: Course,
    learner: User,
    client_for: Callable[[User | None], APIClient],
    caplog: pytest.LogCaptureFixture,
    query: str,
) -> None:
    with caplog.at_level(logging.INFO):
        response = client_for(learner).get(
            f"/api/courses/{course.slug}/search", {"q": query, "k": "3"}
        )

    assert response.status_code == 400
    assert response.json() == {"error": "the query is empty"}
    assert warnings_about(caplog, "400", "the query is empty")
    with pytest.raises(CommandError, match=r"^the query is empty$"):
        call_command("search", query, course=course.slug, stdout=io.StringIO())
