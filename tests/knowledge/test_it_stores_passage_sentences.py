"""Passage sentences are embedded once and stored with their chunk (knowledge.sentences): what
the tutor quotes and checks answers against, without embedding the passages again."""

from __future__ import annotations

import numpy as np
import pytest

from knowledge import embedding, sentences
from knowledge.models import Chunk, Course
from tests.conftest import IngestFn

pytestmark = pytest.mark.django_db

NOTE = (
    b"# Pump care\n\nA centrifugal pump must be primed before start-up. Running it dry damages "
    b"the seal within seconds.\n\n- Check the casing bolts.\n- Open the suction valve.\n"
)


def test_it_splits_lines_list_items_and_sentences() -> None:
    assert sentences.split("**Prime** it. Then start!\n- Open the valve\n2) Close it.") == [
        "Prime it.",
        "Then start!",
        "Open the valve",
        "Close it.",
    ]


def test_a_document_s_sentences_are_embedded_once_and_stored(
    course: Course, ingest: IngestFn
) -> None:
    document = ingest(course, "pumps.md", NOTE)
    chunk = Chunk.objects.get(document=document)
    assert chunk.sentence_vectors is None  # ingestion leaves it to its own task

    assert sentences.index_document(document.pk) == 1
    assert sentences.index_document(document.pk) == 0  # nothing left to do
    chunk.refresh_from_db()
    assert chunk.sentence_vectors is not None
    said = sentences.split(chunk.text)
    rows = np.frombuffer(bytes(chunk.sentence_vectors), dtype=np.float32).reshape(len(said), -1)
    assert np.allclose(rows, embedding.embed(said), atol=1e-5)

    known = sentences.stored([chunk.pk])
    assert list(known) == said
    # The embed function takes the stored rows and embeds only what it has not got.
    embed = sentences.embedder(known)
    both = embed([said[0], "An unrelated sentence about the weather."])
    assert np.allclose(both[0], rows[0])
    assert np.allclose(both[1], embedding.embed(["An unrelated sentence about the weather."])[0])


def test_stored_rows_that_no_longer_match_the_text_are_made_again(
    course: Course, ingest: IngestFn
) -> None:
    document = ingest(course, "pumps.md", NOTE)
    chunk = Chunk.objects.get(document=document)
    sentences.index_document(document.pk)
    Chunk.objects.filter(pk=chunk.pk).update(text=chunk.text + " A third line was added.")

    known = sentences.stored([chunk.pk])
    assert "A third line was added." in known
    chunk.refresh_from_db()
    assert chunk.sentence_vectors is not None
    count = len(sentences.split(chunk.text))
    assert len(bytes(chunk.sentence_vectors)) == count * 384 * 4


def test_a_missing_document_has_nothing_to_index(db: None) -> None:
    assert sentences.index_document(999_999) == 0
