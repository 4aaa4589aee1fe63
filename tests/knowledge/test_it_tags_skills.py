"""Each passage links to the course skills it teaches."""

from __future__ import annotations

import json
from pathlib import Path

from knowledge import services
from knowledge.models import Chunk, ChunkSkill, Course, Skill
from tests.conftest import IngestFn

QUESTIONS = json.loads(
    (Path(__file__).resolve().parents[2] / "knowledge/demo/questions.json").read_text()
)


def _squash(text: str) -> str:
    return " ".join(text.split()).lower()


def test_it_links_demo_passages_to_the_skill_they_teach(demo_course: Course) -> None:
    chunks = list(Chunk.objects.filter(course=demo_course).prefetch_related("skills"))
    checked = linked = 0
    for entry in QUESTIONS:
        for chunk in chunks:
            if _squash(entry["expect"]) in _squash(chunk.text):
                checked += 1
                linked += entry["skill"] in {skill.name for skill in chunk.skills.all()}
    assert checked >= len(QUESTIONS)
    assert linked / checked >= 0.8


def test_it_links_few_skills_per_passage(demo_course: Course) -> None:
    chunks = Chunk.objects.filter(course=demo_course).count()
    links = ChunkSkill.objects.filter(chunk__course=demo_course).count()
    assert 1.0 <= links / chunks <= 2.0


def test_it_tags_new_material_with_existing_skills(course: Course, ingest: IngestFn) -> None:
    seals = Skill.objects.create(
        course=course,
        name="Mechanical Seals",
        description="Fits and inspects mechanical shaft seals on centrifugal pumps.",
    )
    Skill.objects.create(
        course=course,
        name="Spreadsheets",
        description="Builds formulas and charts in a spreadsheet.",
    )
    document = ingest(
        course,
        "seals.md",
        b"# Mechanical seals\n\nA mechanical seal has two faces pressed together by a spring; "
        b"one turns with the pump shaft and one is fixed in the casing. Inspect the faces for "
        b"chips and heat checking whenever the seal is removed.\n",
    )
    chunk = document.chunks.get()
    assert {skill.name for skill in chunk.skills.all()} == {"Mechanical Seals"}
    assert services.tag_chunks(course=course) == 1
    assert seals.chunk_links.get().source == ChunkSkill.Source.AUTO
