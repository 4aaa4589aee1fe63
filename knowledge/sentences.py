"""Passage sentences and their embeddings, stored with each chunk.

The tutor quotes passage sentences ("From your course material") and checks the model's
sentences against them. Embedding a passage's sentences costs ~10 ms each on a CPU core, so they
are embedded once (a django-q2 task after ingestion, or on first use) and kept in
`Chunk.sentence_vectors` as float32 rows in the order `split` gives.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from knowledge import embedding
from knowledge.models import EMBEDDING_DIMENSIONS, Chunk, Document

logger = logging.getLogger(__name__)

Embed = Callable[[Sequence[str]], np.ndarray]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")
_MARKUP = re.compile(r"[*_`#>]+")
_LIST_MARK = re.compile(r"^(?:[-+]\s+|\d+[.)]\s+)")


def split(text: str, *, prose_only: bool = False) -> list[str]:
    """The sentences of a passage or an answer (list items and lines count as sentences).

    prose_only: the running text alone, as check questions are cut from it: headings, list
    items and table rows are left out, and a sentence may run across line breaks.
    """
    if prose_only:
        lines = [line.strip() for line in text.splitlines()]
        kept = (line for line in lines if line and not line.startswith(("#", "|", "-", "*")))
        return [part.strip() for part in _SENTENCE_END.split(" ".join(kept)) if part.strip()]
    found: list[str] = []
    for line in text.splitlines():
        line = _LIST_MARK.sub("", _MARKUP.sub("", line).strip())
        if line:
            found += [part.strip() for part in _SENTENCE_END.split(line) if part.strip()]
    return found


def _decode(chunk: Chunk) -> np.ndarray | None:
    """The stored rows, or None when missing or not matching the chunk's sentences now."""
    raw = chunk.sentence_vectors
    if raw is None:
        return None
    rows = np.frombuffer(bytes(raw), dtype=np.float32)
    count = len(split(chunk.text))
    if rows.size != count * EMBEDDING_DIMENSIONS:
        return None
    return rows.reshape(count, EMBEDDING_DIMENSIONS)


def _index(chunks: Sequence[Chunk]) -> dict[int, np.ndarray]:
    """Embed and store the sentences of `chunks`, in one batch."""
    texts = [split(chunk.text) for chunk in chunks]
    vectors = embedding.embed([sentence for sentences in texts for sentence in sentences])
    made: dict[int, np.ndarray] = {}
    start = 0
    for chunk, sentences in zip(chunks, texts, strict=True):
        rows = vectors[start : start + len(sentences)]
        start += len(sentences)
        Chunk.objects.filter(pk=chunk.pk).update(sentence_vectors=rows.astype(np.float32).tobytes())
        made[chunk.pk] = rows
    return made


def stored(chunk_ids: Iterable[int]) -> dict[str, np.ndarray]:
    """Sentence -> embedding for the chunks' sentences (embedding and storing what is missing)."""
    chunks = list(Chunk.objects.filter(pk__in=set(chunk_ids)).only("text", "sentence_vectors"))
    vectors = {chunk.pk: _decode(chunk) for chunk in chunks}
    missing = [chunk for chunk in chunks if vectors[chunk.pk] is None]
    if missing:
        vectors.update(_index(missing))
    known: dict[str, np.ndarray] = {}
    for chunk in chunks:
        rows = vectors[chunk.pk]
        assert rows is not None
        known.update(zip(split(chunk.text), rows, strict=True))
    return known


def embedder(known: dict[str, np.ndarray]) -> Embed:
    """An embed function that takes stored vectors first and embeds (cached) only the rest."""

    def embed(texts: Sequence[str]) -> np.ndarray:
        rest = [text for text in texts if text not in known]
        if rest:
            known.update(zip(rest, embedding.embed_cached(rest), strict=True))
        if not texts:
            return embedding.embed([])
        return np.vstack([known[text] for text in texts])

    return embed


def index_document(document_id: int, batch: int = 32) -> int:
    """Embed the sentences of a document's chunks that have none stored; the count indexed."""
    if not Document.objects.filter(pk=document_id).exists():
        return 0
    todo = list(
        Chunk.objects.filter(document_id=document_id, sentence_vectors__isnull=True)
        .only("text", "sentence_vectors")
        .order_by("ordinal")
    )
    for start in range(0, len(todo), batch):
        _index(todo[start : start + batch])
    if todo:
        logger.info("document %s: sentences of %d chunks embedded", document_id, len(todo))
    return len(todo)
