"""Search latency (p50/p95 of `knowledge.retrieval.search`, query embedding included) at 10k and
100k chunks per course, and HNSW recall@10 against exact search.

The corpus: a base of real passages cut from the demo documents (the pipeline's chunker at four
sizes, and windows of consecutive sentences), embedded with the real model, plus synthetic
variants: text recombined from the sentences of two base passages, vector a mix of those two
passages' vectors plus a little Gaussian noise, renormalised (see bench/README.md). Each size is
its own course in one table, beside the base course, so the course filter does real work.

Setup is idempotent: a course whose marker (in its description) matches the options is reused;
`--rebuild` builds everything again.

Run: .venv/bin/python bench/retrieval.py [--queries 200] [--sizes 10000,100000] [--rebuild]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, load, log, percentile, setup_django, table

if TYPE_CHECKING:
    import numpy as np
    import psycopg

    from knowledge.models import Course

DEMO = ROOT / "knowledge" / "demo"
DOCUMENTS = ["lockout-tagout.md", "maintenance-planning.txt", "lubrication-guide.html"]
DOCUMENTS += ["bearings-and-vibration.pdf", "confined-space-entry.docx"]
MARKER_VERSION = 1
BASE_SLUG = "bench-retrieval-base"
CHUNKS_PER_DOCUMENT = 200
# Synthetic vectors: mix = w * v_primary + (1 - w) * v_secondary, w in [0.6, 0.9], plus
# N(0, SIGMA^2) per dimension, renormalised. SIGMA 0.02 puts a variant at cosine ~0.9 of its mix.
SIGMA = 0.02
SAME_DOCUMENT = 0.7  # share of variants whose second passage comes from the same document
GOAL_P95_MS = 30.0
GOAL_RECALL = 0.95
HNSW_DDL = (
    "CREATE INDEX chunk_embedding_hnsw ON public.knowledge_chunk USING hnsw "
    "(embedding vector_cosine_ops) WITH (m='16', ef_construction='64')"
)
GIN_DDL = "CREATE INDEX chunk_search_gin ON public.knowledge_chunk USING gin (search)"
COLUMNS = "(document_id, course_id, ordinal, text, heading, token_count, locator, page, embedding)"
TYPES = ["int8", "int8", "int4", "text", "varchar", "int4", "varchar", "int4", "vector"]


@dataclass
class Corpus:
    """Rows of one course, in (document, ordinal) order."""

    texts: list[str]
    headings: list[str]
    sources: list[int]  # index of the demo document each row comes from
    vectors: np.ndarray  # float32, unit rows
    origin: list[int] | None = None  # the base passage a row was made from (itself for a base row)


# --- Base passages: real text, real embeddings --------------------------------------------------


def base_passages(limit: int, seed: int) -> tuple[list[str], list[str], list[int]]:
    """Real passages from the demo documents: (texts, headings, demo document index).

    The pipeline's own chunks at four chunk sizes, then random runs of sentences of a section.
    """
    from django.conf import settings

    from knowledge import embedding
    from knowledge.chunking import chunk_sections, split_sentences
    from knowledge.parsers import Limits, parse

    found: dict[str, tuple[str, int]] = {}
    sections: list[tuple[str, int, list[str]]] = []
    for source, name in enumerate(DOCUMENTS):
        parsed = parse(
            (DEMO / "documents" / name).read_bytes(), name.rsplit(".", 1)[1], limits=Limits()
        )
        title = parsed.title or name
        for max_tokens, overlap in (
            (settings.TUTOR_CHUNK_TOKENS, settings.TUTOR_CHUNK_OVERLAP),
            (120, 20),
            (80, 10),
            (48, 0),
        ):
            for draft in chunk_sections(
                parsed.sections, embedding.count_tokens, max_tokens=max_tokens, overlap=overlap
            ):
                found.setdefault(draft.text, (draft.heading or title, source))
        for section in parsed.sections:
            heading = " > ".join(section.headings) or title
            sentences = [
                sentence
                for paragraph in re.split(r"\n\s*\n", section.text)
                for sentence in split_sentences(paragraph)
            ]
            if len(sentences) >= 2:
                sections.append((heading, source, sentences))
    # The rest: 2 to 5 sentences of one section, in reading order, picked at random; a
    # passage as a chunker with other settings, or an edited copy of the document, could cut.
    pick = random.Random(seed)
    weights = [len(sentences) for _, _, sentences in sections]
    for _ in range(20 * limit):
        if len(found) >= limit:
            break
        heading, source, sentences = pick.choices(sections, weights)[0]
        width = pick.randint(2, min(5, len(sentences)))
        chosen = sorted(pick.sample(range(len(sentences)), width))
        found.setdefault(" ".join(sentences[index] for index in chosen), (heading, source))
    texts = sorted(found)
    random.Random(seed).shuffle(texts)
    texts = texts[:limit]
    return texts, [found[text][0] for text in texts], [found[text][1] for text in texts]


def embedding_text(heading: str, text: str) -> str:
    """What the pipeline embeds for a chunk (ingestion._embedding_text)."""
    from knowledge.chunking import ChunkDraft
    from knowledge.ingestion import _embedding_text
    from knowledge.models import Document

    draft = ChunkDraft(ordinal=0, text=text, token_count=0, locator="", heading=heading)
    return _embedding_text(Document(title=heading), draft)


# --- Synthetic variants --------------------------------------------------------------------------


def synthesize(base: Corpus, size: int, seed: int) -> Corpus:
    """`size` rows: the base passages, then variants made from pairs of them."""
    import numpy as np

    from knowledge.chunking import split_sentences

    count = max(0, size - len(base.texts))
    rng = np.random.default_rng(seed)
    members: dict[int, np.ndarray] = {
        source: np.flatnonzero(np.asarray(base.sources) == source) for source in set(base.sources)
    }
    primary = rng.integers(0, len(base.texts), count)
    same = rng.random(count) < SAME_DOCUMENT
    anywhere = rng.integers(0, len(base.texts), count)
    secondary = np.array(
        [
            rng.choice(members[base.sources[p]]) if s else a
            for p, s, a in zip(primary, same, anywhere, strict=True)
        ],
        dtype=np.int64,
    )
    order = np.lexsort((primary, np.asarray(base.sources)[primary]))  # documents stay topical
    primary, secondary = primary[order], secondary[order]
    weight = rng.uniform(0.6, 0.9, count).astype(np.float32)[:, None]
    vectors = weight * base.vectors[primary] + (1 - weight) * base.vectors[secondary]
    vectors += SIGMA * rng.standard_normal(vectors.shape, dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    sentences = [split_sentences(text.replace("\n", " ")) or [text] for text in base.texts]
    pick = random.Random(seed)
    texts: list[str] = []
    for p, q in zip(primary.tolist(), secondary.tolist(), strict=True):
        own, other = sentences[p], sentences[q]
        length = pick.randint(1, len(own))
        start = pick.randint(0, len(own) - length)
        extra = pick.randint(1, min(2, len(other)))
        at = pick.randint(0, len(other) - extra)
        texts.append(" ".join(own[start : start + length] + other[at : at + extra]))
    return Corpus(
        texts=base.texts + texts,
        headings=base.headings + [base.headings[p] for p in primary.tolist()],
        sources=base.sources + [base.sources[p] for p in primary.tolist()],
        vectors=np.vstack([base.vectors, vectors]).astype(np.float32),
        origin=list(range(len(base.texts))) + primary.tolist(),
    )


def calibration(base: Corpus, corpus: Corpus, sample: int, seed: int) -> str:
    """How the synthetic vectors compare with real embeddings of the same synthetic texts."""
    import numpy as np

    from knowledge import embedding

    assert corpus.origin is not None
    synthetic = np.arange(len(base.texts), len(corpus.texts))
    if len(synthetic) == 0:
        return "no synthetic rows"
    rows = np.random.default_rng(seed).choice(synthetic, min(sample, len(synthetic)), False)
    real = embedding.embed(
        [embedding_text(corpus.headings[row], corpus.texts[row]) for row in rows.tolist()]
    )
    made = corpus.vectors[rows]
    origin = base.vectors[[corpus.origin[row] for row in rows.tolist()]]

    def median(values: np.ndarray) -> str:
        return f"{float(np.median(values)):.3f}"

    return (
        f"over {len(rows)} synthetic rows, real embedding of the text vs synthetic vector: "
        f"cosine to each other {median((real * made).sum(axis=1))}; to the base passage made "
        f"from {median((real * origin).sum(axis=1))} vs {median((made * origin).sum(axis=1))}; "
        f"to the nearest base passage {median((real @ base.vectors.T).max(axis=1))} vs "
        f"{median((made @ base.vectors.T).max(axis=1))}"
    )


def nearest_cosine(vectors: np.ndarray, sample: int, seed: int) -> float:
    """Median cosine of a sample of rows to their nearest other row: how dense the corpus is."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), min(sample, len(vectors)), replace=False)
    similarity = vectors[rows] @ vectors.T
    similarity[np.arange(len(rows)), rows] = -1.0
    return float(np.median(similarity.max(axis=1)))


# --- Loading --------------------------------------------------------------------------------------


def raw_connection() -> psycopg.Connection[Any]:
    """A psycopg connection of our own (binary COPY, vectors as numpy), beside Django's."""
    import psycopg
    from django.db import connection
    from pgvector.psycopg import register_vector

    params = connection.get_connection_params()
    conn = psycopg.connect(
        host=params.get("host"), user=params.get("user"), dbname=params["dbname"], autocommit=True
    )
    register_vector(conn)
    return conn


def marker(size: int, seed: int, base_hash: str) -> str:
    return "bench marker " + json.dumps(
        {"version": MARKER_VERSION, "size": size, "seed": seed, "sigma": SIGMA, "base": base_hash},
        sort_keys=True,
    )


def existing(slug: str, expected: str, size: int, rebuild: bool) -> Course | None:
    """The course, when it holds what `expected` describes; else None (and it is deleted)."""
    from knowledge.models import Course, Document

    course = Course.objects.filter(slug=slug).first()
    if course is None:
        return None
    complete = (
        not rebuild
        and course.description == expected
        and course.chunks.count() == size
        and not course.documents.exclude(status=Document.Status.READY).exists()
    )
    if complete:
        return course
    drop_course(course)
    return None


def drop_course(course: Course) -> None:
    """Delete a course in SQL: the ORM would load every chunk (and its vector) to cascade."""
    from django.db import connection, transaction

    log(f"deleting course {course.slug}")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM knowledge_chunkskill WHERE chunk_id IN "
            "(SELECT id FROM knowledge_chunk WHERE course_id = %s)",
            [course.pk],
        )
        cursor.execute("DELETE FROM knowledge_chunk WHERE course_id = %s", [course.pk])
        course.delete()


def ensure_indexes(conn: psycopg.Connection[Any]) -> None:
    """The migration's search indexes exist (they may be missing after an interrupted load)."""
    present = {
        row[0]
        for row in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'knowledge_chunk'"
        ).fetchall()
    }
    conn.execute("SET maintenance_work_mem = '1GB'")
    for name, ddl in (("chunk_embedding_hnsw", HNSW_DDL), ("chunk_search_gin", GIN_DDL)):
        if name not in present:
            log(f"building index {name}")
            started = time.perf_counter()
            conn.execute(ddl)
            log(f"built {name} in {time.perf_counter() - started:.1f}s")


def load_course(
    conn: psycopg.Connection[Any], slug: str, title: str, description: str, corpus: Corpus
) -> Course:
    """Insert the course, its documents (all ready), chunks (binary COPY), skills and links."""
    import numpy as np
    from django.db import transaction

    from knowledge import embedding
    from knowledge.models import Course, Document, Skill

    rows = len(corpus.texts)
    total = conn.execute("SELECT count(*) FROM knowledge_chunk").fetchone()
    assert total is not None
    # Maintaining the HNSW graph row by row is slower than building it once after a large load.
    rebuild = rows > 0.3 * (total[0] + rows)
    if rebuild:
        log("dropping the search indexes for the bulk load")
        conn.execute("DROP INDEX IF EXISTS chunk_embedding_hnsw")
        conn.execute("DROP INDEX IF EXISTS chunk_search_gin")
    with transaction.atomic():
        course = Course.objects.create(slug=slug, title=title, description=description)
        documents = Document.objects.bulk_create(
            [
                Document(
                    course=course,
                    title=f"{title} part {number + 1}",
                    original_filename=f"{slug}-{number + 1:04d}.md",
                    file=f"bench/{slug}-{number + 1:04d}.md",
                    content_hash=hashlib.sha256(f"{slug}/{number}".encode()).hexdigest(),
                    status=Document.Status.READY,
                    chunks_total=min(CHUNKS_PER_DOCUMENT, rows - number * CHUNKS_PER_DOCUMENT),
                    chunks_done=min(CHUNKS_PER_DOCUMENT, rows - number * CHUNKS_PER_DOCUMENT),
                )
                for number in range(math.ceil(rows / CHUNKS_PER_DOCUMENT))
            ]
        )
        skills = Skill.objects.bulk_create(
            [
                Skill(course=course, name=entry["name"], description=entry["description"])
                for entry in json.loads((DEMO / "skills.json").read_text())
            ]
        )
    log(f"{slug}: counting tokens of {rows} texts")
    tokens = embedding.count_tokens(corpus.texts)
    log(f"{slug}: copying {rows} chunks")
    started = time.perf_counter()
    with conn.transaction(), conn.cursor() as cursor:
        with cursor.copy(f"COPY knowledge_chunk {COLUMNS} FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(TYPES)
            for index in range(rows):
                number, ordinal = divmod(index, CHUNKS_PER_DOCUMENT)
                heading = corpus.headings[index][:500]
                copy.write_row(
                    (
                        documents[number].pk,
                        course.pk,
                        ordinal,
                        corpus.texts[index],
                        heading,
                        tokens[index],
                        heading,
                        None,
                        corpus.vectors[index],
                    )
                )
        ids = [
            row[0]
            for row in cursor.execute(
                "SELECT id FROM knowledge_chunk WHERE course_id = %s ORDER BY document_id, ordinal",
                [course.pk],
            ).fetchall()
        ]
        # Skill links as tag_chunks makes them: cosine to the skill text over the threshold.
        from django.conf import settings

        skill_vectors = embedding.embed([skill.tagging_text() for skill in skills])
        similarity = corpus.vectors @ skill_vectors.T
        hits = np.argwhere(similarity >= settings.TUTOR_SKILL_TAG_THRESHOLD)
        with cursor.copy(
            "COPY knowledge_chunkskill (chunk_id, skill_id, score, source) FROM STDIN"
        ) as copy:
            for row, column in hits.tolist():
                copy.write_row(
                    (ids[row], skills[column].pk, float(similarity[row, column]), "auto")
                )
    log(
        f"{slug}: {rows} chunks and {len(hits)} skill links copied "
        f"in {time.perf_counter() - started:.1f}s"
    )
    if rebuild:
        ensure_indexes(conn)
    log("VACUUM ANALYZE knowledge_chunk, knowledge_chunkskill")
    conn.execute("VACUUM ANALYZE knowledge_chunk")
    conn.execute("VACUUM ANALYZE knowledge_chunkskill")
    return course


def read_corpus(conn: psycopg.Connection[Any], course: Course) -> Corpus:
    """The rows of a loaded course, as loaded."""
    import numpy as np

    rows = conn.execute(
        "SELECT text, heading, embedding FROM knowledge_chunk WHERE course_id = %s "
        "ORDER BY document_id, ordinal",
        [course.pk],
        binary=True,
    ).fetchall()
    return Corpus(
        texts=[row[0] for row in rows],
        headings=[row[1] for row in rows],
        sources=[0] * len(rows),  # not stored; the caller knows them
        vectors=np.vstack([row[2].to_numpy() for row in rows]).astype(np.float32),
    )


def ensure_base(
    conn: psycopg.Connection[Any], limit: int, seed: int, rebuild: bool
) -> tuple[Course, Corpus, str]:
    """The base course: real passages with real embeddings (embedded once, then reused)."""
    import numpy as np

    from knowledge import embedding

    texts, headings, sources = base_passages(limit, seed)
    digest = hashlib.sha256(json.dumps([texts, headings, sources]).encode()).hexdigest()[:16]
    expected = marker(len(texts), seed, digest)
    course = existing(BASE_SLUG, expected, len(texts), rebuild)
    if course is not None:
        log(f"{BASE_SLUG}: reusing {len(texts)} embedded passages")
        corpus = read_corpus(conn, course)
        corpus.sources = sources
        return course, corpus, digest
    log(f"{BASE_SLUG}: embedding {len(texts)} base passages (once; {load()})")
    started = time.perf_counter()
    vectors = embedding.embed([embedding_text(h, t) for h, t in zip(headings, texts, strict=True)])
    log(f"embedded in {time.perf_counter() - started:.1f}s")
    corpus = Corpus(texts, headings, sources, np.asarray(vectors, dtype=np.float32))
    course = load_course(conn, BASE_SLUG, "Retrieval benchmark: base passages", expected, corpus)
    return course, corpus, digest


def ensure_course(
    conn: psycopg.Connection[Any], base: Corpus, digest: str, size: int, seed: int, rebuild: bool
) -> Course:
    slug = f"bench-retrieval-{size // 1000}k" if size % 1000 == 0 else f"bench-retrieval-{size}"
    expected = marker(size, seed, digest)
    course = existing(slug, expected, size, rebuild)
    if course is not None:
        log(f"{slug}: reusing {size} chunks")
        return course
    log(
        f"{slug}: making {max(0, size - len(base.texts))} variants "
        f"of the {len(base.texts)} base passages"
    )
    corpus = synthesize(base, size, seed + size)
    log(
        f"{slug}: median cosine to the nearest other row: real base passages "
        f"{nearest_cosine(base.vectors, 500, seed):.3f}, this course "
        f"{nearest_cosine(corpus.vectors, 500, seed):.3f}"
    )
    log(f"{slug}: calibration {calibration(base, corpus, 300, seed)}")
    return load_course(conn, slug, f"Retrieval benchmark: {size} chunks", expected, corpus)


# --- Queries ------------------------------------------------------------------------------------


def questions(count: int, headings: Sequence[str], seed: int) -> list[str]:
    """Realistic questions: the demo's test questions, rephrased, plus skill and topic ones."""
    originals = [entry["question"] for entry in json.loads((DEMO / "questions.json").read_text())]
    skills = [entry["name"] for entry in json.loads((DEMO / "skills.json").read_text())]
    templates = [
        "{q}",
        "Quick question: {q}",
        "{q} Please keep the answer short.",
        "I'm new to the maintenance team. {q}",
        "{l} - what does the course say?",
        "Can you explain this to me: {l}",
        "My supervisor asked me this and I'm not sure. {q}",
    ]
    found: list[str] = []
    for template in templates:
        for question in originals:
            found.append(template.format(q=question, l=question[0].lower() + question[1:]))
    for skill in skills:
        found.append(f"What do I need to know about {skill.lower()}?")
        found.append(f"Explain the basics of {skill.lower()} for a new technician.")
    topics = sorted({heading.split(" > ")[-1] for heading in headings if heading})
    random.Random(seed).shuffle(topics)
    found.extend(f"What does the material say about {topic.lower()}?" for topic in topics)
    unique = list(dict.fromkeys(found))
    if len(unique) < count:
        raise SystemExit(f"only {len(unique)} distinct questions; ask for fewer")
    chosen = unique[:count]
    random.Random(seed).shuffle(chosen)
    return chosen


# --- Measuring ----------------------------------------------------------------------------------


def app_sql_parts() -> tuple[str, str]:
    """The vector and full-text parts of retrieval._SQL, as the app runs them, one by one."""
    from knowledge import retrieval

    found = re.search(
        r"WITH vec AS \((.*?)\),\s*txt AS \((.*?)\),\s*fused AS", retrieval._SQL, re.S
    )
    if found is None:
        raise SystemExit("retrieval._SQL changed shape: update bench/retrieval.py")
    return found.group(1), found.group(2)


EXACT_SQL = """
SELECT id, embedding <=> %(vector)s::vector AS distance
FROM knowledge_chunk
WHERE course_id = %(course)s
ORDER BY distance
LIMIT %(limit)s
"""

MATCHES_SQL = """
SELECT count(*)
FROM knowledge_chunk c,
     (SELECT replace(plainto_tsquery('english', %(query)s)::text, ' & ', ' | ')::tsquery
             AS query) q
WHERE c.course_id = %(course)s AND c.search @@ q.query
"""


def run_sql(
    sql: str, params: dict[str, Any], *, exact: bool = False, ef_search: int | None = None
) -> tuple[float, list[Any]]:
    """Seconds and rows of one statement, with the SET LOCALs retrieval.search makes.

    `exact` turns index scans off instead (exact search); `ef_search` overrides the setting.
    """
    from django.conf import settings
    from django.db import connection, transaction

    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        if exact:
            cursor.execute("SET LOCAL enable_indexscan = off")
        else:
            ef = ef_search or max(settings.TUTOR_HNSW_EF_SEARCH, params["k"])
            cursor.execute("SET LOCAL hnsw.ef_search = %s", [ef])
            cursor.execute("SET LOCAL hnsw.iterative_scan = 'relaxed_order'")
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return time.perf_counter() - started, rows


def params_for(course_id: int, query: str, vector: str, k: int) -> dict[str, Any]:
    from knowledge import retrieval

    return {
        "vector": vector,
        "query": query,
        "course": course_id,
        "candidates": max(retrieval.CANDIDATES, k),
        "scored": retrieval.FULLTEXT_SCORED,
        "rrf": retrieval.RRF_K,
        "k": k,
    }


def explain(sql: str, params: dict[str, Any]) -> str:
    _, rows = run_sql("EXPLAIN (ANALYZE, BUFFERS OFF, COSTS OFF) " + sql, params)
    return "\n".join("    " + re.sub(r"'\[[^\]]{40,}\]'", "'[...]'", row[0]) for row in rows)


SEARCH = "search() end to end, ms"
EMBED = "  query embedding alone, ms"
EMBED_ONE_THREAD = "  query embedding, torch at 1 thread (what-if), ms"
SQL = "  SQL alone (hybrid, as search runs it), ms"
VECTOR = "    vector part alone, ms"
TEXT = "    full-text part alone, ms"
EXACT = "    vector part as an exact scan instead (index off), ms"
MATCHES = "rows matching the full-text query"
RECALL = "recall@10 vs exact: app's 40 candidates"
RECALL_LIMIT = "recall@10 vs exact: LIMIT 10"
WHAT_IF_EF = (200, 400)


def recall_name(ef: int) -> str:
    return f"recall@10 vs exact: 40 candidates, ef_search={ef} (what-if)"


def recall(rows: list[Any], exact: list[Any]) -> float:
    """Share of the exact top 10 found; a row as near as the exact 10th counts (ties)."""
    tenth = exact[-1][1] + 1e-6
    ids = {row[0] for row in exact}
    best = sorted(rows, key=lambda row: row[1])[:10]  # (id, rank, similarity)
    return sum(1 for row in best if row[0] in ids or 1 - row[2] <= tenth) / 10


def measure(course: Course, queries: list[str], k: int, warmup: int) -> dict[str, list[float]]:
    """Every series of the table for one course, one value per query."""
    import torch

    from knowledge import embedding, retrieval

    vector_sql, text_sql = app_sql_parts()
    for query in queries[:warmup]:
        retrieval.search(course.pk, query, k)
        params = params_for(course.pk, query, retrieval_vector(query), k)
        for sql in (retrieval._SQL, vector_sql, text_sql):
            run_sql(sql, params)
    series: dict[str, list[float]] = defaultdict(list)
    vectors: dict[str, str] = {}
    threads = torch.get_num_threads()
    # Each query runs every measurement in turn, so a burst of load hits all of them alike.
    for query in queries:
        started = time.perf_counter()
        retrieval.search(course.pk, query, k)
        series[SEARCH].append(time.perf_counter() - started)
        started = time.perf_counter()
        vector = retrieval._vector_literal(embedding.embed_one(query))
        series[EMBED].append(time.perf_counter() - started)
        torch.set_num_threads(1)
        started = time.perf_counter()
        embedding.embed_one(query)
        series[EMBED_ONE_THREAD].append(time.perf_counter() - started)
        torch.set_num_threads(threads)
        vectors[query] = vector
        params = params_for(course.pk, query, vector, k)
        series[SQL].append(run_sql(retrieval._SQL, params)[0])
        series[VECTOR].append(run_sql(vector_sql, params)[0])
        series[TEXT].append(run_sql(text_sql, params)[0])
    log(f"{course.slug}: latencies done ({load()}); recall against exact search")
    for query in queries:
        params = params_for(course.pk, query, vectors[query], k)
        seconds, exact = run_sql(EXACT_SQL, {**params, "limit": 10}, exact=True)
        series[EXACT].append(seconds)
        series[RECALL].append(recall(run_sql(vector_sql, params)[1], exact))
        series[RECALL_LIMIT].append(
            recall(run_sql(vector_sql, {**params, "candidates": 10})[1], exact)
        )
        for ef in WHAT_IF_EF:
            series[recall_name(ef)].append(
                recall(run_sql(vector_sql, params, ef_search=ef)[1], exact)
            )
        series[MATCHES].append(run_sql(MATCHES_SQL, params)[1][0][0])
    return series


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--queries", type=int, default=200, help="questions per course")
    parser.add_argument(
        "--sizes", default="10000,100000", help="chunks per course, comma-separated"
    )
    parser.add_argument("--base", type=int, default=3000, help="real passages to embed")
    parser.add_argument("--k", type=int, default=5, help="passages per search (the API's default)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed searches per course first")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the corpus even if loaded")
    parser.add_argument("--database", default="tutor_bench_retrieval", help="database to use")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    sizes = sorted(int(size) for size in args.sizes.split(","))

    setup_django(args.database)
    from django.conf import settings

    from knowledge import embedding

    log(f"database {settings.DATABASES['default']['NAME']}, {load()}")
    embedding.get_model()
    conn = raw_connection()
    ensure_indexes(conn)
    _, base, digest = ensure_base(conn, args.base, args.seed, args.rebuild)
    courses = [ensure_course(conn, base, digest, size, args.seed, args.rebuild) for size in sizes]
    total = conn.execute("SELECT count(*) FROM knowledge_chunk").fetchone()
    conn.close()
    queries = questions(args.queries, base.headings, args.seed)
    vector_sql, text_sql = app_sql_parts()

    results: dict[int, dict[str, list[float]]] = {}
    for size, course in zip(sizes, courses, strict=True):
        log(f"{course.slug}: {len(queries)} queries ({load()})")
        results[size] = measure(course, queries, args.k, args.warmup)
        sample = params_for(course.pk, queries[0], retrieval_vector(queries[0]), args.k)
        log(
            f"{course.slug}: plan of the vector part for {queries[0]!r}:\n"
            + explain(vector_sql, sample)
        )
        log(f"{course.slug}: plan of the full-text part:\n" + explain(text_sql, sample))

    rows: list[list[str]] = []
    for size in sizes:
        label = f"{size:,} chunks"
        for name, values in results[size].items():
            if "recall" in name:
                cells = [f"{percentile(values, 50):.3f}", f"{percentile(values, 5):.3f} (p5)"]
                cells.append(f"{sum(values) / len(values):.3f}")
            else:
                scale, digits = (1000.0, 1) if name.endswith("ms") else (1.0, 0)
                cells = [f"{percentile(values, q) * scale:.{digits}f}" for q in (50, 95)] + [
                    f"{sum(values) / len(values) * scale:.{digits}f}"
                ]
            rows.append([label, name, *cells])
            label = ""
    print(
        f"\nRetrieval over {total[0] if total else 0:,} chunks in {len(sizes) + 1} courses; "
        f"{len(queries)} questions per course, k={args.k}, "
        f"hnsw.ef_search={settings.TUTOR_HNSW_EF_SEARCH}; {load()}\n"
    )
    print(
        table(["course", "measure", "p50", "p95", "mean"], rows, [False, False, True, True, True])
    )

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    def ms(size: int, q: float) -> float:
        return percentile(results[size][SEARCH], q) * 1000

    largest = sizes[-1]
    passed = ms(largest, 95) <= GOAL_P95_MS and mean(results[largest][RECALL]) >= GOAL_RECALL
    others = "; ".join(
        f"at {size // 1000}k p50 {ms(size, 50):.1f} / p95 {ms(size, 95):.1f} ms, "
        f"recall@10 {mean(results[size][RECALL]):.3f}"
        for size in sizes[:-1]
    )
    print(
        f"\nSUMMARY retrieval: at {largest // 1000}k chunks search p50 {ms(largest, 50):.1f} ms / "
        f"p95 {ms(largest, 95):.1f} ms (goal <= {GOAL_P95_MS:.0f} ms), recall@10 "
        f"{mean(results[largest][RECALL]):.3f} (goal >= {GOAL_RECALL})"
        + (f" [{others}]" if others else "")
        + f": {'PASS' if passed else 'FAIL'}"
    )
    return 0


def retrieval_vector(query: str) -> str:
    from knowledge import embedding, retrieval

    return retrieval._vector_literal(embedding.embed_one(query))


if __name__ == "__main__":
    raise SystemExit(main())
