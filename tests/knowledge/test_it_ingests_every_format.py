"""Every supported format is ingested into passages an instructor can trust: the right text,
cut into chunks that fit the model, each citing where it came from (page or heading path)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from knowledge import embedding, ingestion, services
from knowledge.models import Chunk, Course, Document
from tests.conftest import IngestFn
from tests.knowledge import files


def squash(text: str) -> str:
    return " ".join(text.split())


def chunks_of(document: Document) -> list[Chunk]:
    return list(document.chunks.order_by("ordinal"))


def holding(chunks: list[Chunk], sentence: str) -> list[Chunk]:
    """The chunks whose text holds the sentence whole (line breaks count as spaces)."""
    return [chunk for chunk in chunks if squash(sentence) in squash(chunk.text)]


def assert_ready(document: Document) -> list[Chunk]:
    assert document.status == Document.Status.READY, document.error
    chunks = chunks_of(document)
    assert [chunk.ordinal for chunk in chunks] == list(range(len(chunks)))
    assert document.chunks_total == document.chunks_done == len(chunks)
    return chunks


# --- PDF ------------------------------------------------------------------------------------

PDF_PAGES = [
    [
        "Centrifugal pumps move liquid by spinning an impeller inside a volute casing.",
        "The casing turns the speed of the liquid into pressure at the discharge.",
        "Prime the pump before every start so that the impeller never runs dry.",
    ],
    [
        "Cavitation sounds like gravel rattling through the pump casing.",
        "Vapour bubbles form where the suction pressure falls below the vapour pressure",
        "of the liquid and collapse against the impeller vanes.",
    ],
    [
        "Check the shaft alignment with a laser tool after every motor change.",
        "Misalignment above 0.05 mm wears out flexible couplings within months.",
    ],
]
PDF_SENTENCES = {
    1: "Prime the pump before every start so that the impeller never runs dry.",
    # Written across two lines of the page: ingestion joins the lines of a paragraph.
    2: "Vapour bubbles form where the suction pressure falls below the vapour pressure of the "
    "liquid and collapse against the impeller vanes.",
    3: "Misalignment above 0.05 mm wears out flexible couplings within months.",
}
PDF_HEADER = "Northfield Water Works - Pump Handbook"
PDF_FOOTER = "Internal training material, revision C"


def test_it_cites_the_page_of_every_pdf_passage(course: Course, ingest: IngestFn) -> None:
    data = files.pdf_bytes(
        PDF_PAGES,
        title="Centrifugal Pump Handbook",
        header=PDF_HEADER,
        footer=PDF_FOOTER,
        footer_page_numbers=True,
    )
    document = ingest(course, "pump-handbook-v2.pdf", data)

    chunks = assert_ready(document)
    assert len(chunks) == 3  # three short pages: one passage each
    assert [(chunk.locator, chunk.page) for chunk in chunks] == [
        ("p. 1", 1),
        ("p. 2", 2),
        ("p. 3", 3),
    ]
    for page, sentence in PDF_SENTENCES.items():
        found = holding(chunks, sentence)
        assert len(found) == 1, (sentence, [chunk.text for chunk in chunks])
        assert found[0].locator == f"p. {page}"
    # The title comes from the PDF's metadata, not from the file name.
    assert document.title == "Centrifugal Pump Handbook"


def test_it_drops_running_headers_footers_and_page_numbers_from_pdfs(
    course: Course, ingest: IngestFn
) -> None:
    data = files.pdf_bytes(
        PDF_PAGES, header=PDF_HEADER, footer=PDF_FOOTER, footer_page_numbers=True
    )
    document = ingest(course, "pump-handbook.pdf", data)

    chunks = assert_ready(document)
    text = "\n".join(chunk.text for chunk in chunks)
    assert "Northfield Water Works" not in text
    assert "revision C" not in text
    assert "Page" not in text and " of 3" not in text
    # The body text of every page is still there.
    for sentence in PDF_SENTENCES.values():
        assert len(holding(chunks, sentence)) == 1


def test_it_joins_a_word_hyphenated_across_a_pdf_line_break(
    course: Course, ingest: IngestFn
) -> None:
    data = files.pdf_bytes(
        [
            [
                "Pumps that run around the clock need regular main-",
                "tenance by a trained technician and a spare seal kit on the shelf.",
            ]
        ]
    )
    document = ingest(course, "hyphenated.pdf", data)

    chunks = assert_ready(document)
    assert len(holding(chunks, "need regular maintenance by a trained technician")) == 1
    assert not any("\ufffe" in chunk.text or "main-" in chunk.text for chunk in chunks)


# --- Headed formats: DOCX, Markdown, HTML -------------------------------------------------

INTRO = "Pumps in the water works run around the clock, so their care is planned ahead."
SEALS = "Every pump shaft leaves the casing through a seal that keeps the liquid inside."
MECHANICAL = "Never run a mechanical seal dry, not even for a few seconds."
PACKING = "Gland packing must drip slowly, about one drop a second, to cool the shaft sleeve."
BEARINGS = "Grease the pump bearings with two shots every five hundred running hours."
FLUSH = "Flush the seal chamber before the first start."
SENTENCES_BY_LOCATOR = {
    "Pump Care": INTRO,
    "Pump Care > Seals": SEALS,
    "Pump Care > Seals > Mechanical seals": MECHANICAL,
    "Pump Care > Seals > Gland packing": PACKING,
    "Pump Care > Bearings": BEARINGS,
}

MARKDOWN = f"""# Pump Care

{INTRO}

## Seals

{SEALS}

### Mechanical seals

A mechanical seal runs two lapped faces against each other on a film of liquid. {MECHANICAL}

- {FLUSH}
- Check the seal faces at every overhaul.

| Seal type | Allowed leakage |
|---|---|
| Mechanical seal | No visible drops |

### Gland packing

{PACKING}

## Bearings

{BEARINGS}
"""

DOCX_BLOCKS: list[files.Block] = [
    ("Heading 1", "Pump Care"),
    ("Normal", INTRO),
    ("Heading 2", "Seals"),
    ("Normal", SEALS),
    ("Heading 3", "Mechanical seals"),
    (
        "Normal",
        f"A mechanical seal runs two lapped faces against each other on a film of liquid. "
        f"{MECHANICAL}",
    ),
    ("List Bullet", FLUSH),
    ("List Bullet", "Check the seal faces at every overhaul."),
    ("table", "Seal type | Allowed leakage"),
    ("table", "Mechanical seal | No visible drops"),
    ("Heading 3", "Gland packing"),
    ("Normal", PACKING),
    ("Heading 2", "Bearings"),
    ("Normal", BEARINGS),
]

BOILERPLATE = {
    "cookie banner": "We use cookies to remember your pump dashboard settings",
    "header": "Northfield staff portal for plant operators",
    "navigation": "Canteen menu and shift rota",
    "footer": "Copyright Northfield Water Works",
    "related links": "Procurement policy for spare impellers",
}

HTML = f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Pump Care</title></head>
<body>
<div id="cookie-banner" class="cookie-banner" role="dialog">
  <p>{BOILERPLATE["cookie banner"]}. Accept all cookies or choose in Cookie Settings.</p>
  <button>Accept all</button>
</div>
<header class="site-header"><a href="/">Northfield</a><p>{BOILERPLATE["header"]}</p></header>
<nav class="main-nav"><ul>
  <li><a href="/canteen">{BOILERPLATE["navigation"]}</a></li>
  <li><a href="/contact">Contact the control room</a></li>
</ul></nav>
<main><article>
<h1>Pump Care</h1>
<p>{INTRO}</p>
<h2>Seals</h2>
<p>{SEALS}</p>
<h3>Mechanical seals</h3>
<p>A mechanical seal runs two lapped faces against each other on a film of liquid. {MECHANICAL}</p>
<ul><li>{FLUSH}</li><li>Check the seal faces at every overhaul.</li></ul>
<table><tr><th>Seal type</th><th>Allowed leakage</th></tr>
<tr><td>Mechanical seal</td><td>No visible drops</td></tr></table>
<h3>Gland packing</h3>
<p>{PACKING}</p>
<h2>Bearings</h2>
<p>{BEARINGS}</p>
</article></main>
<aside class="related"><h2>Related</h2><ul>
  <li><a href="/procurement">{BOILERPLATE["related links"]}</a></li>
</ul></aside>
<footer class="site-footer"><p>{BOILERPLATE["footer"]} 2025. All rights reserved.</p>
  <a href="/privacy">Privacy Policy</a></footer>
</body>
</html>
"""

HEADED: dict[str, tuple[str, Callable[[], bytes], str]] = {
    # format: (file name, its bytes, the title ingestion must give the document)
    "markdown": ("pump-care-notes.md", lambda: MARKDOWN.encode(), "Pump Care"),
    "docx": (
        "pump-care-notes.docx",
        lambda: files.docx_bytes(DOCX_BLOCKS, title="Pump Care Manual"),
        "Pump Care Manual",
    ),
    "html": ("pump-care-notes.html", lambda: HTML.encode(), "Pump Care"),
}


@pytest.mark.parametrize("kind", sorted(HEADED))
def test_it_cites_the_heading_path_of_every_passage(
    course: Course, ingest: IngestFn, kind: str
) -> None:
    filename, build, title = HEADED[kind]
    document = ingest(course, filename, build())

    chunks = assert_ready(document)
    assert len(chunks) == len(SENTENCES_BY_LOCATOR)  # one short section, one passage
    assert [chunk.locator for chunk in chunks] == list(SENTENCES_BY_LOCATOR)
    for locator, sentence in SENTENCES_BY_LOCATOR.items():
        found = holding(chunks, sentence)
        assert len(found) == 1, (sentence, [chunk.text for chunk in chunks])
        assert found[0].locator == locator
        # The heading travels with its section's text.
        assert found[0].text.startswith(locator.split(" > ")[-1])
    mechanical = holding(chunks, MECHANICAL)[0]
    assert FLUSH in mechanical.text  # list items stay with their section
    assert "Mechanical seal | No visible drops" in mechanical.text  # and tables
    # The title comes from the document itself (first H1, DOCX title, page title).
    assert document.title == title


def test_it_leaves_html_navigation_and_boilerplate_out(course: Course, ingest: IngestFn) -> None:
    document = ingest(course, "pump-care.html", HTML.encode())

    chunks = assert_ready(document)
    text = squash(" ".join(chunk.text for chunk in chunks))
    for where, boilerplate in BOILERPLATE.items():
        assert boilerplate not in text, where
    assert "Accept all" not in text and "Privacy Policy" not in text
    assert "Contact the control room" not in text
    assert squash(MECHANICAL) in text


def test_it_titles_an_html_page_from_its_title_element(course: Course, ingest: IngestFn) -> None:
    page = (
        "<html><head><title>Valve Basics for Fitters</title></head><body><main><article>"
        "<h2>Gate valves</h2><p>A gate valve is either fully open or fully closed. Throttling "
        "with a gate valve erodes its wedge and seats.</p></article></main></body></html>"
    )
    document = ingest(course, "valves.html", page.encode())

    chunks = assert_ready(document)
    assert document.title == "Valve Basics for Fitters"
    assert [chunk.locator for chunk in chunks] == ["Gate valves"]


# --- Plain text ---------------------------------------------------------------------------

PLAIN_TEXT = """Compressor Room Safety

Compressed air at working pressure can blind or kill. Never point an air hose at a person.

Draining The Receiver

Open the receiver drain valve at the start of every shift to remove condensate.
Water left in the receiver rusts it from the inside.

Drain it again before a long weekend shutdown

Checking The Safety Valve

Lift the safety valve lever once a month to prove that it is not stuck.
"""


def test_it_cites_the_title_case_headings_of_plain_text(course: Course, ingest: IngestFn) -> None:
    document = ingest(course, "compressor-notes.txt", PLAIN_TEXT.encode())

    chunks = assert_ready(document)
    assert [chunk.locator for chunk in chunks] == [
        "Compressor Room Safety",
        "Draining The Receiver",
        "Checking The Safety Valve",
    ]
    expected = {
        "Never point an air hose at a person.": "Compressor Room Safety",
        "Water left in the receiver rusts it from the inside.": "Draining The Receiver",
        # A short line in sentence case is body text, not a heading.
        "Drain it again before a long weekend shutdown": "Draining The Receiver",
        "Lift the safety valve lever once a month": "Checking The Safety Valve",
    }
    for sentence, locator in expected.items():
        found = holding(chunks, sentence)
        assert len(found) == 1, sentence
        assert found[0].locator == locator
    assert document.title == "Compressor Room Safety"


# --- Titles, sizes, duplicates -------------------------------------------------------------


def test_it_keeps_the_title_the_uploader_gave(course: Course) -> None:
    data = files.pdf_bytes([["Impellers are balanced after every repair."]], title="From PDF")
    result = services.add_document(
        course=course,
        filename="impellers.pdf",
        content=ContentFile(data, name="impellers.pdf"),
        title="Impeller repair for apprentices",
    )
    assert ingestion.ingest_document(result.document.pk) == Document.Status.READY
    result.document.refresh_from_db()
    assert result.document.title == "Impeller repair for apprentices"


def test_it_keeps_every_passage_within_the_token_budget(demo_course: Course) -> None:
    limit = settings.TUTOR_CHUNK_TOKENS
    chunks = list(Chunk.objects.filter(course=demo_course))
    assert len(chunks) > 50
    assert all(0 < chunk.token_count <= limit for chunk in chunks)
    # The stored count is what the model's tokenizer really sees.
    real = embedding.count_tokens([chunk.text for chunk in chunks])
    assert max(real) <= limit
    # Sections longer than one passage are really split, not cut short.
    assert any(chunk.token_count > limit * 0.8 for chunk in chunks)


def test_it_ingests_the_demo_course_with_the_right_locators(demo_course: Course) -> None:
    documents = {doc.original_filename: doc for doc in demo_course.documents.all()}
    assert set(documents) == {
        "bearings-and-vibration.pdf",
        "confined-space-entry.docx",
        "lockout-tagout.md",
        "lubrication-guide.html",
        "maintenance-planning.txt",
    }
    locators = {name: [c.locator for c in assert_ready(doc)] for name, doc in documents.items()}

    assert sorted(set(locators["bearings-and-vibration.pdf"])) == [f"p. {n}" for n in range(1, 6)]
    roots = {
        "confined-space-entry.docx": "Confined Space Entry, Hazard Identification and PPE",
        "lockout-tagout.md": "Lockout/Tagout and Electrical Safety",
        "lubrication-guide.html": "Lubrication Fundamentals for Maintenance Technicians",
    }
    for name, root in roots.items():
        assert all(loc == root or loc.startswith(root + " > ") for loc in locators[name]), name
    assert (
        "Lockout/Tagout and Electrical Safety > Personal Locks and Lock Removal > "
        "One Person, One Lock"
    ) in locators["lockout-tagout.md"]
    assert (
        "Confined Space Entry, Hazard Identification and PPE > Confined Space Entry > "
        "Atmospheric Testing"
    ) in locators["confined-space-entry.docx"]
    assert (
        "Lubrication Fundamentals for Maintenance Technicians > How Much and How Often > "
        "Avoiding Over-Greasing"
    ) in locators["lubrication-guide.html"]
    assert {"Maintenance Strategies", "The P-F Interval", "The 5 Whys"} <= set(
        locators["maintenance-planning.txt"]
    )
    # The web page's cookie banner, menus and footer are not course material.
    html_text = " ".join(c.text for c in documents["lubrication-guide.html"].chunks.all())
    for boilerplate in ("We use cookies", "About Us", "Training resources", "Copyright 2025"):
        assert boilerplate not in html_text
    assert documents["bearings-and-vibration.pdf"].title == (
        "Bearing Maintenance and Vibration Analysis"
    )


def test_it_links_passages_to_the_skills_they_teach(demo_course: Course) -> None:
    passages = Chunk.objects.filter(
        document__original_filename="lockout-tagout.md", text__contains="personal padlock"
    )
    assert passages.count() == 1
    assert "Lockout/Tagout" in {skill.name for skill in passages[0].skills.all()}


def test_it_treats_identical_bytes_as_the_same_document(course: Course, ingest: IngestFn) -> None:
    data = MARKDOWN.encode()
    document = ingest(course, "pump-care.md", data)
    chunk_ids = [chunk.pk for chunk in assert_ready(document)]

    again = services.add_document(
        course=course, filename="pump-care (copy).md", content=ContentFile(data, name="x.md")
    )

    assert again.created is False
    assert again.document.pk == document.pk
    assert Document.objects.filter(course=course).count() == 1
    document.refresh_from_db()
    assert document.status == Document.Status.READY
    assert [chunk.pk for chunk in chunks_of(document)] == chunk_ids
    # The same handout in another course is that course's own document.
    other = services.create_course(slug="pumps-201", title="Pumps 201")
    elsewhere = services.add_document(
        course=other, filename="pump-care.md", content=ContentFile(data, name="pump-care.md")
    )
    assert elsewhere.created is True
    assert elsewhere.document.pk != document.pk


def test_it_answers_a_repeated_api_upload_with_the_same_document(
    course: Course, instructor: User, client_for: Callable[[User | None], APIClient]
) -> None:
    client = client_for(instructor)
    url = f"/api/courses/{course.slug}/documents/"
    data = PLAIN_TEXT.encode()

    first = client.post(
        url, {"file": SimpleUploadedFile("compressor.txt", data)}, format="multipart"
    )
    assert first.status_code == 202, first.content
    [created] = first.json()
    assert created["duplicate"] is False
    assert created["status"] == Document.Status.PENDING
    assert ingestion.ingest_document(created["id"]) == Document.Status.READY
    chunk_ids = list(Chunk.objects.filter(document_id=created["id"]).values_list("pk", flat=True))

    second = client.post(
        url, {"file": SimpleUploadedFile("compressor-again.txt", data)}, format="multipart"
    )
    assert second.status_code == 200, second.content
    [repeated] = second.json()
    assert repeated["duplicate"] is True
    assert repeated["id"] == created["id"]
    assert repeated["status"] == Document.Status.READY
    assert Document.objects.filter(course=course).count() == 1
    assert (
        list(Chunk.objects.filter(document_id=created["id"]).values_list("pk", flat=True))
        == chunk_ids
    )
    detail = client.get(f"/api/documents/{created['id']}/")
    assert detail.status_code == 200
    assert detail.json()["chunks_total"] == len(chunk_ids) == 3
