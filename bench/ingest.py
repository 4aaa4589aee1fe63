"""Ingestion throughput: chunks per second end to end, against the embedding model alone.

Builds a corpus of Markdown, plain-text, HTML, PDF and DOCX files from the five demo documents
(each one repeated with variations: some words swapped for synonyms, some paragraphs dropped or
swapped, a revision line so every file is new content), ingests it through the real pipeline
(`services.add_document`, then `ingestion.ingest_document` in this process, the code the
django-q2 worker runs), then embeds the exact texts the pipeline embedded with
`embedding.embed` alone, with the same batch size.

The corpus is ingested in rounds and the model-alone timing follows each round, so a change in
the machine's load (other people's tests) hits both sides alike.

Per-stage times come from wrapping the pipeline's functions in this process (no app code is
changed); each stage's time excludes the stages nested in it.

Run: .venv/bin/python bench/ingest.py [--chunks 1500] [--rounds 10] [--replay]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, load, log, percentile, setup_django, table

if TYPE_CHECKING:
    from knowledge.models import Course, Document

DEMO = ROOT / "knowledge" / "demo"
COURSE_SLUG = "bench-ingest"
GOAL = 0.8

# Swaps that keep the text plausible; each variant picks about half of them, in a random
# direction, so chunk texts differ from one copy to the next.
SYNONYMS = [
    ("technician", "fitter"),
    ("machine", "unit"),
    ("check", "verify"),
    ("must", "shall"),
    ("equipment", "plant"),
    ("operator", "worker"),
    ("inspect", "examine"),
    ("replace", "renew"),
    ("large", "big"),
    ("small", "minor"),
    ("usually", "normally"),
    ("often", "frequently"),
    ("common", "usual"),
    ("remove", "take out"),
]
SITES = ["Aberdeen", "Bilbao", "Calgary", "Dortmund", "Eindhoven", "Fremantle", "Gdansk"]


# --- The corpus --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Base:
    """One demo document: the text a variant is made from, and the format it is written in."""

    stem: str
    extension: str
    source: str


def bases() -> list[Base]:
    documents, sources = DEMO / "documents", DEMO / "sources"
    return [
        Base("lockout-tagout", "md", (documents / "lockout-tagout.md").read_text()),
        Base("maintenance-planning", "txt", (documents / "maintenance-planning.txt").read_text()),
        Base("lubrication-guide", "html", (documents / "lubrication-guide.html").read_text()),
        Base("bearings-and-vibration", "pdf", (sources / "bearings-and-vibration.md").read_text()),
        Base("confined-space-entry", "docx", (sources / "confined-space-entry.md").read_text()),
    ]


def _swap_words(text: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in pairs:
        text = re.sub(rf"\b{old}\b", new, text)
        text = re.sub(rf"\b{old.capitalize()}\b", new.capitalize(), text)
    return text


def _pick_swaps(rng: random.Random) -> list[tuple[str, str]]:
    return [
        (old, new) if rng.random() < 0.5 else (new, old)
        for old, new in SYNONYMS
        if rng.random() < 0.5
    ]


def _is_prose(block: str) -> bool:
    stripped = block.lstrip()
    return not stripped.startswith(("#", "<<<", "-", "|")) and len(stripped.split()) > 12


def vary_blocks(source: str, rng: random.Random, revision: str, drop: float) -> str:
    """A variant of a Markdown-like or plain-text source (blocks split by blank lines)."""
    swaps = _pick_swaps(rng)
    blocks: list[str] = []
    for block in re.split(r"\n\s*\n", source.strip()):
        if _is_prose(block) and rng.random() < drop:
            continue
        blocks.append(_swap_words(block, swaps) if not block.lstrip().startswith("#") else block)
    for index in range(len(blocks) - 1):
        if _is_prose(blocks[index]) and _is_prose(blocks[index + 1]) and rng.random() < 0.1:
            blocks[index], blocks[index + 1] = blocks[index + 1], blocks[index]
    first = next(index for index, block in enumerate(blocks) if _is_prose(block))
    blocks[first] = f"{blocks[first]} {revision}"
    return "\n\n".join(blocks) + "\n"


def vary_html(source: str, rng: random.Random, revision: str, drop: float) -> str:
    """A variant of the HTML page: only the article's paragraphs and list items change."""
    swaps = _pick_swaps(rng)
    head, rest = source.split("<article>", 1)
    article, tail = rest.split("</article>", 1)
    marked = False

    def paragraph(match: re.Match[str]) -> str:
        nonlocal marked
        tag, body = match.group(1), match.group(2)
        if tag == "p" and marked and rng.random() < drop:
            return ""
        body = _swap_words(body, swaps)
        if tag == "p" and not marked:
            body, marked = f"{body} {revision}", True
        return f"<{tag}>{body}</{tag}>"

    article = re.sub(r"<(p|li)>(.*?)</\1>", paragraph, article, flags=re.S)
    return f"{head}<article>{article}</article>{tail}"


def corpus(seed: int, workdir: Path) -> Iterator[tuple[str, bytes]]:
    """Files (name, bytes) without end: every demo document, then variant 2 of each, and so on."""
    from knowledge.demo import build_documents

    rng = random.Random(seed)
    for variant in count(1):
        for base in bases():
            revision = (
                f"This is revision {variant} of these notes, issued for the "
                f"{rng.choice(SITES)} site."
            )
            name = f"{base.stem}-r{variant:03d}.{base.extension}"
            for attempt in range(20):
                drop = 0.08 + 0.04 * attempt  # a PDF page that overflows gets shorter
                if base.extension == "html":
                    yield name, vary_html(base.source, rng, revision, drop).encode()
                    break
                text = vary_blocks(base.source, rng, revision, drop)
                if base.extension in ("md", "txt"):
                    yield name, text.encode()
                    break
                source = workdir / f"{base.stem}.md"
                output = workdir / name
                source.write_text(text)
                try:
                    if base.extension == "pdf":
                        build_documents.build_pdf(source, output)
                    else:
                        build_documents.build_docx(source, output)
                except ValueError:  # a page overflowed: try a shorter variant
                    continue
                yield name, output.read_bytes()
                output.unlink()
                break
            else:
                raise RuntimeError(f"could not build a variant of {base.stem}")


# --- Timing the pipeline's stages ---------------------------------------------------------------

UPLOAD = "upload (add_document: hash, store file, insert row)"
CLAIM = "claim (conditional update)"
PARSE = "parse"
CHUNK = "chunk: split and pack"
TOKENS = "chunk: token counts (tokenizer)"
EMBED = "embed (embedding.embed)"
WRITE = "DB write (Chunk bulk_create)"
HEARTBEAT = "heartbeat + progress count"
RESUME = "resume check (_keep_matching_chunks)"
TAGGING = "skill tagging: load chunks, score, write links"
TAG_EMBED = "skill tagging: embed the skill texts"
OTHER = "other (file read, commits, bookkeeping)"
STAGES = [
    UPLOAD,
    CLAIM,
    PARSE,
    CHUNK,
    TOKENS,
    EMBED,
    WRITE,
    HEARTBEAT,
    RESUME,
    TAGGING,
    TAG_EMBED,
    OTHER,
]


@dataclass
class Stages:
    """Exclusive time per stage: a stage's clocks stop while a stage nested in it runs.

    Two clocks: wall time, and this process's CPU time (all its threads; PostgreSQL's own work
    runs in another process and is not in it). CPU time moves less with other people's load.
    """

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    cpu: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    stack: list[list[Any]] = field(default_factory=list)  # [name, wall start, CPU start]
    active: bool = False
    embedded: list[list[str]] = field(default_factory=list)  # the texts of each embed call
    restore: list[tuple[Any, str, Any]] = field(default_factory=list)

    def current(self) -> str | None:
        return self.stack[-1][0] if self.stack else None

    def _charge(self, wall: float, cpu: float) -> None:
        name, wall_start, cpu_start = self.stack[-1]
        self.seconds[name] += wall - wall_start
        self.cpu[name] += cpu - cpu_start

    def run(self, name: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        if self.stack:
            self._charge(wall, cpu)
        self.stack.append([name, wall, cpu])
        try:
            return function(*args, **kwargs)
        finally:
            wall, cpu = time.perf_counter(), time.process_time()
            self._charge(wall, cpu)
            self.stack.pop()
            if self.stack:
                self.stack[-1][1:] = [wall, cpu]

    def reset(self) -> None:
        self.seconds.clear()
        self.cpu.clear()
        self.embedded.clear()

    def wrap(self, owner: Any, attribute: str, names: str | dict[str, str]) -> None:
        """Time `owner.attribute` as a stage.

        `names` is the stage's name, or a map from the calling stage to the name to use (a call
        from a stage not in the map counts in its caller's time).
        """
        original = getattr(owner, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            caller = self.current()
            name = names if isinstance(names, str) else names.get(caller or "")
            if not self.active or name is None:
                return original(*args, **kwargs)
            if name == EMBED:
                self.embedded.append(list(args[0]))
            return self.run(name, original, *args, **kwargs)

        setattr(owner, attribute, timed)
        self.restore.append((owner, attribute, original))

    def unwrap(self) -> None:
        for owner, attribute, original in reversed(self.restore):
            setattr(owner, attribute, original)
        self.restore.clear()


def instrument(stages: Stages) -> None:
    from knowledge import embedding, ingestion
    from knowledge.models import Chunk

    stages.wrap(ingestion, "claim", CLAIM)
    stages.wrap(ingestion, "parse", PARSE)
    stages.wrap(ingestion, "chunk_sections", CHUNK)
    stages.wrap(embedding, "count_tokens", {CHUNK: TOKENS})
    # The worker embeds the chunk batches; tag_chunks embeds the course's skill texts.
    stages.wrap(embedding, "embed", {OTHER: EMBED, TAGGING: TAG_EMBED})
    stages.wrap(Chunk.objects, "bulk_create", WRITE)
    stages.wrap(ingestion, "_heartbeat", HEARTBEAT)
    stages.wrap(ingestion, "_keep_matching_chunks", RESUME)
    stages.wrap(ingestion, "tag_chunks", TAGGING)


# --- The benchmark ------------------------------------------------------------------------------


def fresh_course() -> Course:
    """The benchmark's course, emptied, with the demo skills so skill tagging does real work."""
    from django.db import connection

    from knowledge import services
    from knowledge.models import Course, Skill

    deleted, _ = Course.objects.filter(slug=COURSE_SLUG).delete()
    if deleted:
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE knowledge_chunk")
    course = services.create_course(slug=COURSE_SLUG, title="Ingestion benchmark")
    for entry in json.loads((DEMO / "skills.json").read_text()):
        Skill.objects.create(course=course, name=entry["name"], description=entry["description"])
    return course


def ingest(course: Course, name: str, data: bytes, stages: Stages) -> tuple[Document, float, float]:
    """Upload and ingest one file as the app does; returns the document, wall and CPU seconds."""
    from django.core.files.base import ContentFile
    from trafilatura.deduplication import LRU_TEST

    from knowledge import ingestion, services

    # trafilatura's process-wide de-duplication cache would strip the paragraphs the HTML
    # variants share after the third copy (see README): start each file as a fresh worker would.
    LRU_TEST.clear()
    started, cpu = time.perf_counter(), time.process_time()
    result = stages.run(
        UPLOAD, services.add_document, course=course, filename=name, content=ContentFile(data)
    )
    status = stages.run(OTHER, ingestion.ingest_document, result.document.pk)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    if not result.created or status != "ready":
        result.document.refresh_from_db()
        raise SystemExit(f"{name}: ingestion ended {status!r}: {result.document.error}")
    result.document.refresh_from_db()
    return result.document, seconds, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--chunks", type=int, default=1500, help="chunks to ingest (about)")
    parser.add_argument(
        "--rounds", type=int, default=10, help="pipeline-then-model pairs the chunks are cut into"
    )
    parser.add_argument("--database", default="tutor_bench_ingest", help="database to use")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--replay",
        action="store_true",
        help="also time the model on the pipeline's own batches (per document), not one call",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as temp:
        # Uploaded files go to a throw-away media folder, never var/media.
        os.environ["TUTOR_MEDIA_ROOT"] = str(Path(temp) / "media")
        setup_django(args.database)
        return run(args, Path(temp))


def run(args: argparse.Namespace, workdir: Path) -> int:
    from django.conf import settings

    from knowledge import embedding, services
    from knowledge.models import Chunk

    batch = settings.TUTOR_EMBED_BATCH
    log(f"database {settings.DATABASES['default']['NAME']}, embed batch {batch}, {load()}")
    # The benchmark calls ingest_document itself: nothing is queued for a django-q2 cluster.
    services.enqueue_ingestion = lambda document_id: None
    course = fresh_course()
    stages = Stages()
    instrument(stages)

    log("warming up: the model, the parsers and the database (the demo documents, untimed)")
    embedding.get_model()
    files = corpus(args.seed, workdir)
    warm = [next(files) for _ in bases()]
    for name, data in warm:
        ingest(course, name, data, stages)
    embedding.embed(list(Chunk.objects.filter(course=course).values_list("text", flat=True)))
    stages.reset()

    per_round = max(1, args.chunks // args.rounds)
    totals: dict[str, float] = defaultdict(float)  # wall and CPU seconds of each side
    chunks = documents = 0
    formats: dict[str, int] = defaultdict(int)
    calls: list[list[str]] = []  # the pipeline's embed calls, for the padding estimate
    rounds: list[list[str]] = []  # texts of each round: the model-alone calls
    paired: list[float] = []  # per round: model seconds / pipeline seconds
    stages.active = True
    for number in range(1, args.rounds + 1):
        stages.embedded.clear()
        ids: list[int] = []
        wall = cpu = 0.0
        written = 0
        while written < per_round:
            name, data = next(files)
            document, seconds, cpu_seconds = ingest(course, name, data, stages)
            wall += seconds
            cpu += cpu_seconds
            written += document.chunks_total
            ids.append(document.pk)
            formats[name.rsplit(".", 1)[1]] += 1
        stages.active = False
        round_texts = [text for call in stages.embedded for text in call]
        stored = Chunk.objects.filter(document_id__in=ids).count()
        if stored != written or len(round_texts) != written:
            raise SystemExit(
                f"round {number}: {written} chunks, {stored} stored, {len(round_texts)} embedded"
            )
        model_wall, model_cpu = timed(embedding.embed, round_texts, batch_size=batch)
        totals["pipeline"] += wall
        totals["pipeline cpu"] += cpu
        totals["model"] += model_wall
        totals["model cpu"] += model_cpu
        if args.replay:
            replay_wall, replay_cpu = timed(replay, stages.embedded, batch)
            totals["replay"] += replay_wall
            totals["replay cpu"] += replay_cpu
        stages.active = True
        chunks += written
        documents += len(ids)
        calls.extend(stages.embedded)
        rounds.append(round_texts)
        paired.append(model_wall / wall)
        log(
            f"round {number}/{args.rounds}: {len(ids)} files, {written} chunks; pipeline "
            f"{written / wall:.1f} chunks/s, model {written / model_wall:.1f} chunks/s "
            f"(ratio {model_wall / wall:.2f}); {load()}"
        )
    stages.unwrap()

    pipeline, model = totals["pipeline"], totals["model"]
    ratio = model / pipeline  # = pipeline chunks/s over model chunks/s
    cpu_ratio = totals["model cpu"] / totals["pipeline cpu"]
    median = percentile(paired, 50)

    def row(label: str, wall: float, cpu: float, rate: bool = False) -> list[str]:
        return [
            label,
            f"{wall:.2f}",
            f"{100 * wall / pipeline:.1f}%",
            f"{cpu:.2f}",
            f"{chunks / wall:.1f}" if rate else "",
        ]

    rows = [
        row(stage, stages.seconds.get(stage, 0.0), stages.cpu.get(stage, 0.0)) for stage in STAGES
    ]
    accounted = sum(stages.seconds.values())
    if abs(accounted - pipeline) > 0.01 * pipeline:
        log(f"note: the stages add up to {accounted:.2f}s of {pipeline:.2f}s")
    rows.append(row("**pipeline, end to end**", pipeline, totals["pipeline cpu"], rate=True))
    rows.append(
        row(
            f"**model alone**, same texts (one embed call per round, batch {batch})",
            model,
            totals["model cpu"],
            rate=True,
        )
    )
    if args.replay:
        rows.append(
            row(
                "model alone, the pipeline's own batches (one call per batch it made)",
                totals["replay"],
                totals["replay cpu"],
                rate=True,
            )
        )
    rows.append(
        ["pipeline / model throughput (wall; CPU)", f"{ratio:.2f}", "", f"{cpu_ratio:.2f}", ""]
    )
    real, padded = padded_tokens(calls, batch)
    _, padded_model = padded_tokens(rounds, batch)
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(formats.items()))
    print(
        f"\nIngestion of {chunks} chunks from {documents} files ({kinds}) in {args.rounds} rounds; "
        f"{real / chunks:.0f} tokens per embedded text; padding adds {padded / real - 1:.0%} "
        f"to the tokens the model runs in the pipeline's calls, {padded_model / real - 1:.0%} "
        f"in the model-alone calls; {load()}\n"
    )
    print(
        table(
            ["stage", "wall s", "share", "CPU s", "chunks/s"],
            rows,
            [False, True, True, True, True],
        )
    )
    # The verdict uses the median of the paired rounds: each pair ran within seconds, so a
    # change in the machine's load between rounds does not decide it.
    verdict = "PASS" if median >= GOAL else "FAIL"
    print(
        f"\nSUMMARY ingest: pipeline {chunks / pipeline:.1f} chunks/s vs model "
        f"{chunks / model:.1f} chunks/s = {ratio:.2f} of the model (median of "
        f"{len(paired)} paired rounds {median:.2f}; goal >= {GOAL}): {verdict}"
    )
    return 0


def padded_tokens(calls: list[list[str]], batch: int) -> tuple[int, int]:
    """Tokens the model reads for these embed calls: (without padding, with padding).

    sentence-transformers sorts each call's texts by length, cuts them into batches and pads
    each batch to its longest text, so fewer texts per call means more padding.
    """
    from knowledge import embedding

    limit = embedding.max_tokens()
    real = padded = 0
    for call in calls:
        ordered = sorted(call, key=len, reverse=True)
        counts = [min(tokens + 2, limit) for tokens in embedding.count_tokens(ordered)]
        for start in range(0, len(counts), batch):
            group = counts[start : start + batch]
            real += sum(group)
            padded += max(group) * len(group)
    return real, padded


def replay(calls: list[list[str]], batch: int) -> None:
    """Embed each of the pipeline's calls again, as it made them."""
    from knowledge import embedding

    for call in calls:
        embedding.embed(call, batch_size=batch)


def timed(function: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, float]:
    """Wall and CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu


if __name__ == "__main__":
    raise SystemExit(main())
