"""Hybrid retrieval: pgvector HNSW cosine search and PostgreSQL full-text search, fused by
reciprocal rank, both filtered by course inside SQL so no other course's text can come back."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from knowledge import embedding
from knowledge.models import Course

# Reciprocal-rank constant: 60 is the value from the original RRF paper and works well.
RRF_K = 60
# Each side contributes this many candidates to the fusion.
CANDIDATES = 40
MAX_K = 50
# The full-text side ranks at most this many matching rows (bench/retrieval.py: ranking every
# match of a common word took 300-800 ms at 100k passages; 500 keeps the p95 under 30 ms).
FULLTEXT_SCORED = 500


class SearchError(ValueError):
    """The query cannot be searched (empty, or k out of range)."""


@dataclass
class Hit:
    chunk_id: int
    document_id: int
    document: str
    filename: str
    locator: str
    page: int | None
    text: str
    score: float
    similarity: float | None
    skills: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_SQL = """
WITH vec AS (
    SELECT id, row_number() OVER (ORDER BY distance) AS rank, 1 - distance AS similarity
    FROM (
        SELECT id, embedding <=> %(vector)s::vector AS distance
        FROM knowledge_chunk
        WHERE course_id = %(course)s
        ORDER BY embedding <=> %(vector)s::vector
        LIMIT %(candidates)s
    ) nearest
),
txt AS (
    SELECT id, row_number() OVER (ORDER BY text_rank DESC, id) AS rank
    FROM (
        SELECT matching.id, ts_rank(matching.search, matching.query) AS text_rank
        FROM (
            -- Any word of the question matches: in a big course that can be half the rows.
            -- Rank at most FULLTEXT_SCORED of them; the vector side covers broad questions.
            SELECT c.id, c.search, q.query
            FROM knowledge_chunk c,
                 (SELECT replace(plainto_tsquery('english', %(query)s)::text, ' & ', ' | ')
                         ::tsquery AS query) q
            WHERE c.course_id = %(course)s AND c.search @@ q.query
            LIMIT %(scored)s
        ) matching
        ORDER BY text_rank DESC
        LIMIT %(candidates)s
    ) matched
),
fused AS (
    SELECT COALESCE(vec.id, txt.id) AS id,
           COALESCE(1.0 / (%(rrf)s + vec.rank), 0) + COALESCE(1.0 / (%(rrf)s + txt.rank), 0)
               AS score,
           vec.similarity
    FROM vec FULL OUTER JOIN txt ON vec.id = txt.id
)
SELECT c.id, d.id, d.title, d.original_filename, c.locator, c.page, c.text,
       fused.score, fused.similarity,
       COALESCE(
           (SELECT array_agg(s.name ORDER BY s.name)
            FROM knowledge_chunkskill cs JOIN knowledge_skill s ON s.id = cs.skill_id
            WHERE cs.chunk_id = c.id),
           ARRAY[]::varchar[]
       )
FROM fused
JOIN knowledge_chunk c ON c.id = fused.id
JOIN knowledge_document d ON d.id = c.document_id
WHERE c.course_id = %(course)s AND d.status = 'ready'
ORDER BY fused.score DESC, fused.similarity DESC NULLS LAST, c.id
LIMIT %(k)s
"""


def _vector_literal(values: Any) -> str:
    return "[" + ",".join(f"{float(value):.7g}" for value in values) + "]"


def search(course: Course | int, query: str, k: int = 5) -> list[Hit]:
    """The k passages of the course that best answer the query, best first."""
    query = (query or "").strip()
    if not query:
        raise SearchError("the query is empty")
    if not 1 <= k <= MAX_K:
        raise SearchError(f"k must be between 1 and {MAX_K}")
    course_id = course.pk if isinstance(course, Course) else int(course)
    # Cached: the tutor embeds the question again to find the sentences to quote.
    vector = _vector_literal(embedding.embed_cached([query])[0])
    params: dict[str, Any] = {
        "vector": vector,
        "query": query,
        "course": course_id,
        "candidates": max(CANDIDATES, k),
        "scored": FULLTEXT_SCORED,
        "rrf": RRF_K,
        "k": k,
    }
    with transaction.atomic(), connection.cursor() as cursor:
        # SET LOCAL lasts for this transaction only. Iterative scans keep the HNSW search going
        # until enough rows pass the course filter, so a small course among big ones still
        # gets its full candidate list.
        cursor.execute("SET LOCAL hnsw.ef_search = %s", [max(settings.TUTOR_HNSW_EF_SEARCH, k)])
        cursor.execute("SET LOCAL hnsw.iterative_scan = 'relaxed_order'")
        cursor.execute(_SQL, params)
        rows = cursor.fetchall()
    return [
        Hit(
            chunk_id=row[0],
            document_id=row[1],
            document=row[2],
            filename=row[3],
            locator=row[4],
            page=row[5],
            text=row[6],
            score=round(float(row[7]), 6),
            similarity=None if row[8] is None else round(float(row[8]), 4),
            skills=list(row[9]),
        )
        for row in rows
    ]
