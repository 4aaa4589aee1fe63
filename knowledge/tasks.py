"""django-q2 entry points: thin, they call the ingestion worker."""

from __future__ import annotations

from knowledge import ingestion, sentences


def ingest_document(document_id: int) -> str:
    return ingestion.ingest_document(document_id)


def requeue_stalled() -> int:
    return ingestion.requeue_stalled()


def index_sentences(document_id: int) -> int:
    return sentences.index_document(document_id)
