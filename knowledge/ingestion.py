"""The ingestion worker: parse -> clean -> chunk -> embed in batches -> write -> tag skills.

Runs inside the django-q2 cluster (see tasks.py). Built to survive `kill -9` at any point:
- the document is claimed with a conditional update, so two workers never ingest it at once;
- each batch of chunks is written in one transaction with the progress counter, and chunks are
  unique on (document, ordinal), so a resumed run skips what is there and never duplicates it;
- `ready` is set only when every chunk is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from knowledge import embedding
from knowledge.chunking import ChunkDraft, chunk_sections
from knowledge.models import Chunk, Document
from knowledge.parsers import IngestError, Limits, parse
from knowledge.services import tag_chunks, title_from_filename

logger = logging.getLogger(__name__)


class Abandoned(Exception):
    """The document was reset or deleted while we worked on it: stop quietly."""


def claim(document_id: int) -> bool:
    """Take the document for this worker: pending, or processing with a dead worker."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.TUTOR_INGEST_STALE_SECONDS)
    claimed = (
        Document.objects.filter(pk=document_id)
        .filter(
            Q(status=Document.Status.PENDING)
            | Q(status=Document.Status.PROCESSING, heartbeat_at__lt=stale)
            | Q(status=Document.Status.PROCESSING, heartbeat_at__isnull=True)
        )
        .update(status=Document.Status.PROCESSING, started_at=now, heartbeat_at=now)
    )
    # race: another worker may have claimed it first; then the count is 0 and it is theirs.
    return claimed == 1


def ingest_document(document_id: int) -> str:
    """Ingest one document; returns its final status (or 'skipped' when not ours to do)."""
    if not claim(document_id):
        logger.info("document %s: not claimable (taken, finished or gone)", document_id)
        return "skipped"
    started = time.perf_counter()
    document = Document.objects.select_related("course").get(pk=document_id)
    try:
        _run(document)
    except Abandoned:
        logger.info("document %s: reset or deleted during ingestion; stopped", document_id)
        return "abandoned"
    except IngestError as exc:
        _fail(document_id, str(exc))
        logger.warning("document %s (%s) failed: %s", document_id, document.original_filename, exc)
        return Document.Status.FAILED
    except Exception as exc:
        logger.exception(
            "document %s (%s) failed unexpectedly", document_id, document.original_filename
        )
        _fail(document_id, f"internal error while ingesting: {exc.__class__.__name__}: {exc}")
        return Document.Status.FAILED
    logger.info(
        "document %s (%s) ready: %d chunks in %.2fs",
        document_id,
        document.original_filename,
        document.chunks_total,
        time.perf_counter() - started,
    )
    return Document.Status.READY


def batched(items: Sequence[ChunkDraft], size: int) -> Iterator[Sequence[ChunkDraft]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _fail(document_id: int, reason: str) -> None:
    Document.objects.filter(pk=document_id, status=Document.Status.PROCESSING).update(
        status=Document.Status.FAILED, error=reason[:2000], finished_at=timezone.now()
    )


def _run(document: Document) -> None:
    with document.file.open("rb") as handle:
        data = handle.read()
    limits = Limits(
        docx_max_uncompressed_bytes=settings.TUTOR_DOCX_MAX_UNCOMPRESSED_BYTES,
        docx_max_entries=settings.TUTOR_DOCX_MAX_ENTRIES,
    )
    parsed = parse(data, document.extension(), limits=limits)
    drafts = chunk_sections(
        parsed.sections,
        embedding.count_tokens,
        max_tokens=settings.TUTOR_CHUNK_TOKENS,
        overlap=settings.TUTOR_CHUNK_OVERLAP,
    )
    if not drafts:
        raise IngestError("no extractable text in the file")
    if parsed.title and document.title == title_from_filename(document.original_filename):
        document.title = parsed.title[:300]
        Document.objects.filter(pk=document.pk).update(title=document.title)
    done = _keep_matching_chunks(document, drafts)
    document.chunks_total = len(drafts)
    _heartbeat(document.pk, chunks_total=len(drafts), chunks_done=len(done))
    todo = [draft for draft in drafts if draft.ordinal not in done]
    for batch in batched(todo, settings.TUTOR_EMBED_BATCH):
        vectors = embedding.embed(
            [_embedding_text(document, draft) for draft in batch],
            batch_size=settings.TUTOR_EMBED_ENCODE_BATCH,
        )
        with transaction.atomic():
            Chunk.objects.bulk_create(
                [
                    Chunk(
                        document=document,
                        course_id=document.course_id,
                        ordinal=draft.ordinal,
                        text=draft.text,
                        heading=draft.heading[:500],
                        token_count=draft.token_count,
                        locator=draft.locator[:500],
                        page=draft.page,
                        embedding=vector,
                    )
                    for draft, vector in zip(batch, vectors, strict=True)
                ],
                ignore_conflicts=True,
            )
            _heartbeat(document.pk, chunks_done=document.chunks.count())
    tag_chunks(chunks=document.chunks.all(), course=document.course)
    with transaction.atomic():
        written = document.chunks.count()
        if written != len(drafts):
            raise IngestError(f"internal error: {written} of {len(drafts)} chunks written")
        finished = Document.objects.filter(
            pk=document.pk, status=Document.Status.PROCESSING
        ).update(
            status=Document.Status.READY,
            chunks_done=written,
            error="",
            finished_at=timezone.now(),
        )
        if finished != 1:
            raise Abandoned()
        # The passages' sentences are embedded next, apart: the document is searchable already.
        transaction.on_commit(lambda: enqueue_sentence_index(document.pk))


def _keep_matching_chunks(document: Document, drafts: list[ChunkDraft]) -> set[int]:
    """Ordinals already written by an earlier, interrupted run that match this run's chunks."""
    existing = dict(document.chunks.values_list("ordinal", "text"))
    if not existing:
        return set()
    expected = {draft.ordinal: draft.text for draft in drafts}
    if any(expected.get(ordinal) != text for ordinal, text in existing.items()):
        # The chunking changed since (other settings): start the document over.
        document.chunks.all().delete()
        return set()
    logger.info("document %s: resuming with %d chunks already written", document.pk, len(existing))
    return set(existing)


def _heartbeat(document_id: int, **fields: int) -> None:
    updated = Document.objects.filter(pk=document_id, status=Document.Status.PROCESSING).update(
        heartbeat_at=timezone.now(), **fields
    )
    if updated != 1:
        raise Abandoned()


def _embedding_text(document: Document, draft: ChunkDraft) -> str:
    # The heading path tells the model what the passage is about when its text does not.
    context = draft.heading or document.title
    return (
        f"{context}\n{draft.text}" if context and not draft.text.startswith(context) else draft.text
    )


def enqueue_sentence_index(document_id: int) -> None:
    from django_q.tasks import async_task

    async_task(
        "knowledge.tasks.index_sentences",
        document_id,
        task_name=f"index-sentences-{document_id}",
        group="ingestion",
    )


def requeue_stalled() -> int:
    """Queue again every document whose worker died (no heartbeat for a while) or never started."""
    from knowledge.services import enqueue_ingestion

    now = timezone.now()
    stale = now - timedelta(seconds=settings.TUTOR_INGEST_STALE_SECONDS)
    # A pending document may wait behind others for a long time; it counts as lost (its queue
    # message never sent) only once the broker itself would have given up on it.
    lost = now - timedelta(seconds=settings.Q_CLUSTER["retry"])
    stalled = list(
        Document.objects.filter(
            Q(status=Document.Status.PROCESSING, heartbeat_at__lt=stale)
            | Q(status=Document.Status.PROCESSING, heartbeat_at__isnull=True)
            | Q(status=Document.Status.PENDING, created_at__lt=lost)
        ).values_list("pk", flat=True)
    )
    for document_id in stalled:
        logger.warning("document %s stalled; queued again", document_id)
        enqueue_ingestion(document_id)
    return len(stalled)
