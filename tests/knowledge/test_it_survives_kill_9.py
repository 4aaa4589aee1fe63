"""A worker killed with `kill -9` in the middle of a document loses nothing and duplicates
nothing: after a restart the document reaches `ready` with one copy of each chunk, and it is
never `ready` while partial.

How the restart finds the document: the migration 0002 schedule runs
`knowledge.tasks.requeue_stalled` every minute; the django-q2 sentinel looks at schedules every
30 seconds of its guard loop. The task the dead worker held stays locked in the ORM queue for
Q_CLUSTER["retry"] (task timeout + 60 s, half an hour by default), so the sweep is what brings
the document back; and the documents queued behind it, which the dead cluster had taken ahead of
its worker, come back because the sweep releases the messages of a cluster that is gone
(`tutor_site.queue.release_orphans`).
"""

from __future__ import annotations

import importlib
import signal
from datetime import timedelta

import pytest
from django.apps import apps
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import connection
from django.utils import timezone
from django_q.models import OrmQ, Schedule

from knowledge import embedding, ingestion, services
from knowledge.chunking import chunk_sections
from knowledge.models import Chunk, Course, Document
from knowledge.parsers import Limits, parse
from tests.conftest import kill_group, wait_for
from tutor_site import queue

SCHEDULE = importlib.import_module("knowledge.migrations.0002_fill_requeue_schedule")

_PARTS = ["inlet valve", "drive belt", "bearing housing", "coolant pump"]
_PARTS += ["gearbox", "air filter", "hydraulic hose", "limit switch"]
_ACTS = ["inspect", "clean", "tighten", "replace", "lubricate", "measure", "record", "calibrate"]


def _notebook(paragraphs: int) -> bytes:
    """A long shift notebook of made-up maintenance entries, each paragraph different."""
    lines = ["# Shift notebook for the north packing line", ""]
    for i in range(paragraphs):
        if i % 12 == 0:
            lines += [f"## Week {i // 12 + 1} of the overhaul", ""]
        part, act = _PARTS[i % 8], _ACTS[(i * 3) % 8]
        lines += [
            f"Entry {i}: before the morning run the crew will {act} the {part} on station "
            f"{i % 17}. The gauge read {i * 7 % 101} units at {i % 60} minutes past the hour, so "
            f"the supervisor wants the {part} looked at again after {i % 5 + 2} cycles. Wear "
            f"above {i % 9 + 1} millimetres means the line stops and the fitter of shift "
            f"{i % 3 + 1} is called.",
            "",
        ]
    return "\n".join(lines).encode()


def _expected_chunks(data: bytes) -> list[str]:
    """The chunk texts a fresh ingestion of these bytes produces (same parse and chunk path)."""
    parsed = parse(
        data,
        "md",
        limits=Limits(
            docx_max_uncompressed_bytes=settings.TUTOR_DOCX_MAX_UNCOMPRESSED_BYTES,
            docx_max_entries=settings.TUTOR_DOCX_MAX_ENTRIES,
        ),
    )
    drafts = chunk_sections(
        parsed.sections,
        embedding.count_tokens,
        max_tokens=settings.TUTOR_CHUNK_TOKENS,
        overlap=settings.TUTOR_CHUNK_OVERLAP,
    )
    return [draft.text for draft in drafts]


def _progress(document_id: int) -> tuple[str, int, int, int, int, int]:
    """status, chunks_done, chunks_total, chunks stored, distinct ordinals, max ordinal + 1,
    read in one statement, so one snapshot."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT d.status, d.chunks_done, d.chunks_total,
                   count(c.id), count(DISTINCT c.ordinal), coalesce(max(c.ordinal) + 1, 0)
            FROM knowledge_document d LEFT JOIN knowledge_chunk c ON c.document_id = d.id
            WHERE d.id = %s GROUP BY d.id
            """,
            [document_id],
        )
        row = cursor.fetchone()
    assert row is not None
    return row


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_document_survives_kill_9_of_the_cluster(process_env, start_cluster) -> None:
    # A transactional test database starts without the rows migrations wrote once another
    # transactional test has flushed it: put the sweep's schedule back the way 0002 writes it.
    SCHEDULE.forwards(apps, None)
    assert Schedule.objects.filter(func="knowledge.tasks.requeue_stalled", minutes=1).exists()

    course = services.create_course(slug="night-shift", title="Night shift")
    data = _notebook(200)
    expected = _expected_chunks(data)
    assert len(expected) > 60  # many batches of 8: a long window to kill it in

    env = {"TUTOR_EMBED_BATCH": "8", "TUTOR_INGEST_STALE_SECONDS": "3"}
    # One worker: the documents queued behind the notebook wait in the cluster, leased to it.
    first = start_cluster(**env, TUTOR_Q_WORKERS="1")
    # on_commit fires at once here (no surrounding transaction): the task is queued now.
    document = services.add_document(
        course=course, filename="notebook.md", content=ContentFile(data, name="notebook.md")
    ).document
    behind = [
        services.add_document(
            course=course,
            filename=f"note-{n}.md",
            content=ContentFile(f"# Note {n}\n\nCheck the {_PARTS[n]} weekly.".encode()),
        ).document
        for n in range(2)
    ]

    def partway() -> bool:
        _status, done, total, *_ = _progress(document.pk)
        return 0 < done < total

    wait_for(partway, 90, "the cluster to be part-way through the document")
    kill_group(first, signal.SIGKILL)

    status, done, total, stored, distinct, span = _progress(document.pk)
    assert status == Document.Status.PROCESSING, "a half-written document must not be ready"
    assert total == len(expected)
    assert 0 < stored < total
    # What is stored is a clean prefix, and the progress counter tells the truth about it.
    assert stored == distinct == span == done

    # The documents behind it are still pending, their queue messages leased to the dead
    # cluster for half an hour.
    assert {d.status for d in Document.objects.filter(pk__in=[d.pk for d in behind])} == {
        Document.Status.PENDING
    }
    assert OrmQ.objects.filter(lock__gt=timezone.now()).count() >= len(behind)

    start_cluster(**env)

    def finished() -> bool:
        status, _done, total, stored, _distinct, _span = _progress(document.pk)
        assert status != Document.Status.READY or stored == total, "ready while partial"
        waiting = Document.objects.filter(pk__in=[d.pk for d in behind]).exclude(
            status=Document.Status.READY
        )
        return status != Document.Status.PROCESSING and not waiting.exists()

    # The sweep (every minute; the sentinel looks every 30 s) hands the notebook to the new
    # cluster, and releases the messages the dead one held, long before their lease ends.
    wait_for(finished, 150, "the restarted cluster to finish the documents")

    document.refresh_from_db()
    assert document.status == Document.Status.READY, document.error
    chunks = list(Chunk.objects.filter(document=document).order_by("ordinal"))
    assert document.chunks_total == document.chunks_done == len(expected)
    assert [chunk.ordinal for chunk in chunks] == list(range(len(expected)))
    assert [chunk.text for chunk in chunks] == expected
    assert all(chunk.embedding is not None and len(chunk.embedding) == 384 for chunk in chunks)


def _document(course: Course, name: str, **fields: object) -> Document:
    return Document.objects.create(
        course=course,
        title=name,
        original_filename=f"{name}.md",
        file=f"documents/{name}.md",
        content_hash=name.ljust(64, "0"),
        **fields,
    )


def test_only_a_document_whose_worker_went_quiet_is_taken_over(db, settings) -> None:
    settings.TUTOR_INGEST_STALE_SECONDS = 60
    course = services.create_course(slug="sweep", title="Sweep")
    now = timezone.now()
    old = now - timedelta(seconds=61)
    busy = _document(course, "busy", status=Document.Status.PROCESSING, heartbeat_at=now)
    quiet = _document(course, "quiet", status=Document.Status.PROCESSING, heartbeat_at=old)
    ready = _document(course, "ready", status=Document.Status.READY, heartbeat_at=old)
    failed = _document(course, "failed", status=Document.Status.FAILED, heartbeat_at=old)
    OrmQ.objects.all().delete()

    assert ingestion.requeue_stalled() == 1
    queued = [task.args() for task in OrmQ.objects.all()]
    assert queued == [(quiet.pk,)]

    assert not ingestion.claim(busy.pk), "a live worker's document was taken from it"
    assert not ingestion.claim(ready.pk)
    assert not ingestion.claim(failed.pk)
    assert ingestion.claim(quiet.pk)
    quiet.refresh_from_db()
    assert quiet.status == Document.Status.PROCESSING
    assert quiet.heartbeat_at is not None and quiet.heartbeat_at >= now
    # The new owner's fresh heartbeat keeps a third worker out.
    assert not ingestion.claim(quiet.pk)
    busy.refresh_from_db()
    assert busy.heartbeat_at == now
    assert Document.objects.get(pk=ready.pk).status == Document.Status.READY


def test_a_lease_is_kept_while_no_running_cluster_is_known(db) -> None:
    # With no cluster's stats to compare with, a lease may be a live cluster's: left alone.
    leased = OrmQ.objects.create(
        key="tutor", payload="x", lock=timezone.now() + timedelta(minutes=30)
    )
    assert queue.release_orphans() == 0
    assert OrmQ.objects.get(pk=leased.pk).lock == leased.lock
