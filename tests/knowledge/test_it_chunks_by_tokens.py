"""The chunker and the text clean-up, tested as the pure functions they are.

Chunks must fit the embedding model (never over `max_tokens`), lose nothing and keep the
order, share at most `overlap` tokens with the chunk before, keep a heading with the first
sentence under it, and never mix two sections, so that every passage cites one exact place.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knowledge import embedding
from knowledge.chunking import ChunkDraft, Section, chunk_sections, split_sentences
from knowledge.cleaning import drop_page_furniture, join_hyphenated, normalise, reflow
from knowledge.parsers import Limits, parse

DEMO = Path(__file__).resolve().parents[2] / "knowledge" / "demo" / "documents"


def count_words(texts: Sequence[str]) -> list[int]:
    """A deterministic token counter: one token per word."""
    return [len(text.split()) for text in texts]


# --- Generated documents in which every word is unique -------------------------------------
#
# Word n is "Wn" (the last word of a sentence "Wn."), so every word says where it came from:
# what a chunk holds, and what two chunks share, can be read off exactly.


@dataclass
class Generated:
    sections: list[Section]
    words: list[list[str]]  # per section, its words in reading order, heading first
    sentences: list[list[list[str]]]  # per section, its sentences as word lists
    heading: list[str | None]  # per section, the heading written into its text, if any
    max_tokens: int
    overlap: int


@st.composite
def generated(draw: st.DrawFn) -> Generated:
    max_tokens = draw(st.integers(min_value=8, max_value=48))
    overlap = draw(st.integers(min_value=0, max_value=max_tokens - 1))
    counter = 0
    sections: list[Section] = []
    all_words: list[list[str]] = []
    all_sentences: list[list[list[str]]] = []
    headings_written: list[str | None] = []
    for number in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["page", "headings", "none"]))
        paragraphs: list[str] = []
        sentences: list[list[str]] = []
        for _ in range(draw(st.integers(min_value=1, max_value=3))):
            lines: list[str] = []
            for _ in range(draw(st.integers(min_value=1, max_value=5))):
                # Mostly short sentences, some longer than a whole chunk.
                length = draw(
                    st.one_of(
                        st.integers(min_value=1, max_value=12),
                        st.integers(min_value=max_tokens, max_value=3 * max_tokens),
                    )
                )
                words = [f"W{counter + i}" for i in range(length)]
                words[-1] += "."
                counter += length
                sentences.append(words)
                lines.append(" ".join(words))
            # Sentences of a paragraph on one line or broken over several (as PDFs are).
            joiner = draw(st.sampled_from([" ", "\n"]))
            paragraphs.append(joiner.join(lines))
        text = "\n\n".join(paragraphs)
        heading: str | None = None
        if kind == "page":
            section = Section(text=text, page=number + 1)
        elif kind == "headings":
            heading = f"Heading{number}"
            section = Section(text=text, headings=("Manual", heading))
        else:
            section = Section(text=text)
        sections.append(section)
        words_in_order = [word for sentence in sentences for word in sentence]
        all_words.append(([heading] if heading else []) + words_in_order)
        all_sentences.append(sentences)
        headings_written.append(heading)
    return Generated(sections, all_words, all_sentences, headings_written, max_tokens, overlap)


def by_section(doc: Generated, chunks: list[ChunkDraft]) -> list[list[ChunkDraft]]:
    """The chunks of each section; fails if a chunk holds words of two sections."""
    owner = {word: index for index, words in enumerate(doc.words) for word in words}
    grouped: list[list[ChunkDraft]] = [[] for _ in doc.sections]
    for chunk in chunks:
        owners = {owner[word] for word in chunk.text.split()}
        assert len(owners) == 1, f"chunk {chunk.ordinal} crosses sections: {chunk.text!r}"
        grouped[owners.pop()].append(chunk)
    return grouped


def shared(previous: list[str], following: list[str]) -> int:
    """How many words the following chunk repeats from the end of the previous one."""
    common = len(set(previous) & set(following))
    assert following[:common] == previous[len(previous) - common :], "overlap is not a seam"
    return common


@settings(max_examples=300, deadline=None, database=None)
@given(doc=generated())
def test_it_keeps_every_chunk_within_budget_and_loses_nothing(doc: Generated) -> None:
    chunks = chunk_sections(
        doc.sections, count_words, max_tokens=doc.max_tokens, overlap=doc.overlap
    )

    assert [chunk.ordinal for chunk in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert 0 < chunk.token_count <= doc.max_tokens
        assert chunk.token_count == len(chunk.text.split())  # the count is the real one
    grouped = by_section(doc, chunks)
    for section, words, chunks_here in zip(doc.sections, doc.words, grouped, strict=True):
        assert chunks_here, "a section with text gave no chunk"
        # Each chunk cites its own section.
        for chunk in chunks_here:
            assert chunk.locator == section.locator
            assert chunk.page == section.page
            assert chunk.heading == " > ".join(section.headings)
        # Reading the chunks in order, without the overlap, gives the section back.
        rebuilt = chunks_here[0].text.split()
        for previous, following in itertools.pairwise(chunks_here):
            before, after = previous.text.split(), following.text.split()
            repeated = shared(before, after)
            assert repeated <= doc.overlap
            assert repeated < len(after), "a chunk holds nothing new"
            rebuilt += after[repeated:]
        assert rebuilt == words


@settings(max_examples=200, deadline=None, database=None)
@given(doc=generated())
def test_it_keeps_whole_sentences_and_headings_with_their_first_sentence(
    doc: Generated,
) -> None:
    chunks = chunk_sections(
        doc.sections, count_words, max_tokens=doc.max_tokens, overlap=doc.overlap
    )
    grouped = by_section(doc, chunks)
    for sentences, heading, chunks_here in zip(doc.sentences, doc.heading, grouped, strict=True):
        texts = [chunk.text.split() for chunk in chunks_here]
        # A sentence that fits in a chunk is never cut.
        for sentence in sentences:
            if len(sentence) + (heading is not None) <= doc.max_tokens:
                assert any(contains(words, sentence) for words in texts), sentence
        if heading is None:
            continue
        # The heading opens the section's first chunk, followed by its first sentence whole.
        assert texts[0][0] == heading
        assert sum(heading in words for words in texts) == 1
        first = sentences[0]
        if 1 + len(first) <= doc.max_tokens:
            assert texts[0][: 1 + len(first)] == [heading, *first]


def contains(words: list[str], run: list[str]) -> bool:
    return any(words[i : i + len(run)] == run for i in range(len(words) - len(run) + 1))


# --- Plain cases -----------------------------------------------------------------------------


def sentence(start: int, length: int) -> str:
    return " ".join(f"W{start + i}" for i in range(length)) + "."


def test_it_carries_whole_sentences_into_the_next_chunk() -> None:
    text = " ".join(sentence(10 * n, 5) for n in range(8))  # eight sentences of five words
    chunks = chunk_sections([Section(text=text, page=4)], count_words, max_tokens=20, overlap=10)

    assert [chunk.text for chunk in chunks] == [
        " ".join(sentence(10 * n, 5) for n in range(0, 4)),
        " ".join(sentence(10 * n, 5) for n in range(2, 6)),
        " ".join(sentence(10 * n, 5) for n in range(4, 8)),
    ]
    assert {chunk.locator for chunk in chunks} == {"p. 4"}


def test_it_never_carries_anything_with_no_overlap() -> None:
    text = " ".join(sentence(10 * n, 5) for n in range(8))
    chunks = chunk_sections([Section(text=text)], count_words, max_tokens=20, overlap=0)

    assert len(chunks) == 2
    assert not set(chunks[0].text.split()) & set(chunks[1].text.split())


def test_it_cuts_a_very_long_sentence_into_pieces_that_fit() -> None:
    long_sentence = sentence(0, 100)
    chunks = chunk_sections(
        [Section(text=f"{long_sentence} {sentence(500, 3)}", headings=("Seals",))],
        count_words,
        max_tokens=16,
        overlap=4,
    )

    assert len(chunks) >= 7
    assert all(chunk.token_count <= 16 for chunk in chunks)
    assert chunks[0].text.split()[:3] == ["Seals", "W0", "W1"]
    everything = " ".join(chunk.text for chunk in chunks).split()
    for index in range(100):
        assert f"W{index}" in everything or f"W{index}." in everything


def test_it_cites_each_section_and_page_in_its_own_chunks() -> None:
    sections = [
        Section(text="Prime the pump before the start.", page=1),
        Section(text="Vent the casing of trapped air.", page=2),
        Section(text="Lock out the motor first.", headings=("Pump Care", "Seals")),
        Section(text="Intro text without any heading."),
    ]
    chunks = chunk_sections(sections, count_words, max_tokens=50, overlap=10)

    assert [(chunk.locator, chunk.page, chunk.heading, chunk.text) for chunk in chunks] == [
        ("p. 1", 1, "", "Prime the pump before the start."),
        ("p. 2", 2, "", "Vent the casing of trapped air."),
        ("Pump Care > Seals", None, "Pump Care > Seals", "Seals\nLock out the motor first."),
        ("", None, "", "Intro text without any heading."),
    ]


def test_it_keeps_list_items_apart() -> None:
    text = "Before start-up:\n- Vent the casing\n- Open the suction valve\n1. Start the motor"
    [chunk] = chunk_sections([Section(text=text)], count_words, max_tokens=50, overlap=0)

    assert chunk.text.splitlines() == [
        "Before start-up:",
        "- Vent the casing",
        "- Open the suction valve",
        "1. Start the motor",
    ]


def test_it_gives_nothing_for_nothing() -> None:
    assert chunk_sections([], count_words) == []
    assert chunk_sections([Section(text="  \n\n ", page=1)], count_words) == []


@pytest.mark.parametrize(
    ("max_tokens", "overlap", "message"),
    [
        (7, 0, "max_tokens must be at least 8"),
        (0, 0, "max_tokens must be at least 8"),
        (8, 8, "overlap must be between 0 and max_tokens - 1"),
        (50, 60, "overlap must be between 0 and max_tokens - 1"),
        (50, -1, "overlap must be between 0 and max_tokens - 1"),
    ],
)
def test_it_refuses_invalid_sizes(max_tokens: int, overlap: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        chunk_sections(
            [Section(text="Some text.")], count_words, max_tokens=max_tokens, overlap=overlap
        )


def test_it_accepts_the_smallest_valid_sizes() -> None:
    chunks = chunk_sections([Section(text=sentence(0, 30))], count_words, max_tokens=8, overlap=7)
    assert chunks and all(chunk.token_count <= 8 for chunk in chunks)


# --- The embedding model's own tokenizer ---------------------------------------------------


def test_it_fits_real_course_text_to_the_models_tokenizer() -> None:
    parsed = parse((DEMO / "lockout-tagout.md").read_bytes(), "md", limits=Limits())
    chunks = chunk_sections(parsed.sections, embedding.count_tokens, max_tokens=64, overlap=16)

    real = embedding.count_tokens([chunk.text for chunk in chunks])
    assert max(real) <= 64
    assert all(chunk.token_count == count for chunk, count in zip(chunks, real, strict=True))
    assert len(chunks) > len(parsed.sections)  # long sections really are split
    locators = {section.locator for section in parsed.sections}
    assert {chunk.locator for chunk in chunks} == locators
    # Every sentence short enough to fit is found whole in a chunk of its own section.
    for section in parsed.sections:
        texts = [" ".join(c.text.split()) for c in chunks if c.locator == section.locator]
        for paragraph in section.text.split("\n\n"):
            for line in paragraph.splitlines():
                for part in split_sentences(line):
                    if embedding.count_tokens([part])[0] <= 48:
                        assert any(" ".join(part.split()) in text for text in texts), part


def test_it_cuts_a_long_sentence_to_the_models_tokenizer() -> None:
    words = [f"impeller{n}" for n in range(300)]
    text = "Inspect " + " ".join(words) + " carefully."
    chunks = chunk_sections(
        [Section(text=text, page=1)], embedding.count_tokens, max_tokens=40, overlap=10
    )

    assert len(chunks) > 5
    assert max(embedding.count_tokens([chunk.text for chunk in chunks])) <= 40
    seen = [word for chunk in chunks for word in chunk.text.split()]
    positions = [seen.index(word) for word in words]
    assert positions == sorted(positions)  # nothing lost, in order


@pytest.mark.parametrize(
    "run",
    [
        "https://pumps.example/" + "/".join(["manual"] * 150),
        "Contents " + "." * 300 + " 3",
    ],
    ids=["long url", "dot leader"],
)
def test_it_cuts_a_long_unbroken_run_to_the_models_tokenizer(run: str) -> None:
    chunks = chunk_sections(
        [Section(text=f"See {run} for details.", page=1)], embedding.count_tokens, max_tokens=64
    )
    assert max(embedding.count_tokens([chunk.text for chunk in chunks])) <= 64


# --- Clean-up of extracted text ------------------------------------------------------------


def test_it_normalises_line_ends_spaces_and_control_characters() -> None:
    raw = "\ufeff  Pump\t\tcare\u00a0 notes \r\nLine\x00 two\x07\rLine three\n\n\n\n\nEnd  "
    assert normalise(raw) == "Pump care notes\nLine two\nLine three\n\nEnd"


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(alphabet=st.sampled_from("ab .\n\r\t\u00a0\x00\x0b\ufeff-"), max_size=60))
def test_it_normalises_to_a_fixed_point(raw: str) -> None:
    clean = normalise(raw)
    assert normalise(clean) == clean
    assert "\r" not in clean and "\t" not in clean and "\x00" not in clean
    assert "\n\n\n" not in clean
    assert all(line == line.strip() for line in clean.split("\n"))


def test_it_joins_a_word_hyphenated_at_a_line_end() -> None:
    assert join_hyphenated("regular main-\ntenance is due") == "regular maintenance is due"
    assert join_hyphenated("a well-known pump") == "a well-known pump"
    assert join_hyphenated("pressure -\nthen") == "pressure -\nthen"
    assert join_hyphenated("the end-\n\nNext part") == "the end-\n\nNext part"


PAGE_BODIES = [
    "Centrifugal pumps need a flooded suction.\nPrime the casing before the start.",
    "Cavitation erodes the impeller vanes.\nRaise the suction level to stop it.",
    "Worn wear rings lower the delivered head.\nMeasure the clearance at overhaul.",
    "Couplings wear fast when shafts are misaligned.\nAlign them with a laser tool.",
]


def test_it_drops_running_headers_footers_and_page_numbers() -> None:
    pages = [
        f"Northfield Pump Handbook\n{body}\nRevision C, page {n} of 4\n{n}"
        for n, body in enumerate(PAGE_BODIES, start=1)
    ]
    assert drop_page_furniture(pages) == PAGE_BODIES


def test_it_drops_page_numbers_in_their_usual_shapes() -> None:
    shapes = ["7", "Page 7", "page 7 of 40", "7 / 40", "  7  "]
    for shape in shapes:
        pages = [f"{body}\n{shape}" for body in PAGE_BODIES]
        assert drop_page_furniture(pages) == PAGE_BODIES, shape


def test_it_keeps_lines_that_repeat_on_only_a_few_pages() -> None:
    pages = [f"Safety warning\n{body}" for body in PAGE_BODIES[:2]] + PAGE_BODIES * 2
    # "Safety warning" opens 2 of 10 pages: that is content, not a running header.
    assert drop_page_furniture(pages) == pages


def test_it_cannot_tell_furniture_on_fewer_than_three_pages_but_drops_page_numbers() -> None:
    pages = [f"Pump Handbook\n{PAGE_BODIES[0]}\nPage 1 of 2", f"Pump Handbook\n{PAGE_BODIES[1]}\n2"]
    assert drop_page_furniture(pages) == [
        f"Pump Handbook\n{PAGE_BODIES[0]}",
        f"Pump Handbook\n{PAGE_BODIES[1]}",
    ]
    assert drop_page_furniture([]) == []


def test_it_keeps_a_number_in_the_middle_of_a_page() -> None:
    first, second = PAGE_BODIES[1].split("\n")
    middle = f"{first}\nSet the relief valve of the test rig to\n150\nbar.\n{second}"
    pages = [PAGE_BODIES[0], middle, *PAGE_BODIES[2:]]
    numbered = [f"{page}\n{n}" for n, page in enumerate(pages, start=1)]
    assert drop_page_furniture(numbered) == pages


def test_it_reflows_lines_broken_inside_a_paragraph() -> None:
    text = (
        "The casing turns the speed\nof the liquid into pressure.\nCheck the seal.\n"
        "Before start-up:\n- Vent the casing\n- Open the\nsuction valve\n"
        "2) Start\n\u2022 Listen\n\nA new paragraph\nstarts here."
    )
    assert reflow(text) == (
        "The casing turns the speed of the liquid into pressure.\nCheck the seal.\n"
        "Before start-up:\n- Vent the casing\n- Open the suction valve\n"
        "2) Start\n\u2022 Listen\n\nA new paragraph starts here."
    )
