"""django-q2 entry points: thin, they call the ingestion worker."""

from __future__ import annotations

from knowledge import ingestion, sentences
from tutor_site import queue


def ingest_document(document_id: int) -> str:
    return ingestion.ingest_document(document_id)


def requeue_stalled() -> int:
    # The minute's upkeep: first the queue's messages that a killed cluster held (documents
    # still pending behind it), then documents whose worker died mid-way.
    queue.release_orphans()
    return ingestion.requeue_stalled()


def index_sentences(document_id: int) -> int:
    return sentences.index_document(document_id)
