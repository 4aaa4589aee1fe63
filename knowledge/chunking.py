"""Split parsed sections into passages sized in tokens of the embedding model.

Pure: no ORM, no model. The caller passes a function that counts tokens for a batch of texts
(the embedding model's own tokenizer in production), so chunk sizes match what the model sees.

Rules:
- a chunk never crosses a section (a PDF page, or a heading's section), so its locator is exact;
- a heading and the first sentence under it form one unit that is never split;
- chunks hold at most `max_tokens` tokens (a single sentence longer than that is cut by words);
- consecutive chunks of a section share up to `overlap` tokens of whole sentences.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

TokenCounter = Callable[[Sequence[str]], list[int]]

_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+(?=[\"'(\[]?[A-Z0-9])")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")


@dataclass(frozen=True)
class Section:
    """A run of text with one locator: a PDF page, or the text under one heading path."""

    text: str
    headings: tuple[str, ...] = ()
    page: int | None = None

    @property
    def locator(self) -> str:
        if self.page is not None:
            return f"p. {self.page}"
        return " > ".join(self.headings)


@dataclass
class ChunkDraft:
    ordinal: int
    text: str
    token_count: int
    locator: str
    heading: str
    page: int | None = None


@dataclass
class _Unit:
    text: str
    tokens: int
    joiner: str = " "


@dataclass
class _Builder:
    max_tokens: int
    overlap: int
    units: list[_Unit] = field(default_factory=list)
    tokens: int = 0


def split_sentences(paragraph: str) -> list[str]:
    """Sentences of one paragraph; a list item is one sentence at least."""
    paragraph = paragraph.strip()
    if not paragraph:
        return []
    return [part.strip() for part in _SENTENCE_END.split(paragraph) if part.strip()]


def _paragraphs(text: str) -> list[str]:
    blocks: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        # List items stay separate lines; other lines of a block are one paragraph.
        current: list[str] = []
        for line in lines:
            if _LIST_ITEM.match(line) and current:
                blocks.append(" ".join(current))
                current = []
            current.append(line)
        blocks.append(" ".join(current))
    return blocks


def _section_units(section: Section, count: TokenCounter, max_tokens: int) -> list[_Unit]:
    pieces: list[tuple[str, str]] = []  # (text, joiner before it)
    for paragraph in _paragraphs(section.text):
        for index, sentence in enumerate(split_sentences(paragraph)):
            pieces.append((sentence, " " if index else "\n"))
    if section.headings and section.page is None:
        heading = section.headings[-1]
        if pieces:
            pieces[0] = (f"{heading}\n{pieces[0][0]}", "\n")
        else:
            pieces = [(heading, "\n")]
    if not pieces:
        return []
    counts = count([text for text, _ in pieces])
    units: list[_Unit] = []
    for (text, joiner), tokens in zip(pieces, counts, strict=True):
        if tokens <= max_tokens:
            units.append(_Unit(text, tokens, joiner))
        else:
            units.extend(_split_long(text, joiner, tokens, count, max_tokens))
    return units


def _split_long(
    text: str, joiner: str, tokens: int, count: TokenCounter, max_tokens: int
) -> list[_Unit]:
    """Cut an over-long sentence into word windows that fit."""
    words = text.split()
    per_word = max(tokens / max(len(words), 1), 1.0)
    step = max(1, int(max_tokens / per_word * 0.9))
    windows = [" ".join(words[i : i + step]) for i in range(0, len(words), step)]
    counts = count(windows)
    result: list[_Unit] = []
    for index, (window, window_tokens) in enumerate(zip(windows, counts, strict=True)):
        if window_tokens > max_tokens and len(window.split()) > 1:
            result.extend(_split_long(window, joiner, window_tokens, count, max_tokens))
        elif window_tokens > max_tokens:
            # One "word" too long to fit (a URL, a dot leader): cut it by characters.
            result.extend(_split_word(window, joiner if index == 0 else " ", count, max_tokens))
        else:
            result.append(_Unit(window, window_tokens, joiner if index == 0 else " "))
    return result


def _split_word(word: str, joiner: str, count: TokenCounter, max_tokens: int) -> list[_Unit]:
    units: list[_Unit] = []
    rest = word
    while rest:
        low, high = 1, len(rest)  # the longest prefix that fits, by bisection
        while low < high:
            middle = (low + high + 1) // 2
            if count([rest[:middle]])[0] <= max_tokens:
                low = middle
            else:
                high = middle - 1
        piece, rest = rest[:low], rest[low:]
        units.append(_Unit(piece, count([piece])[0], " " if units else joiner))
    return units


def _join(units: Sequence[_Unit]) -> str:
    text = ""
    for index, unit in enumerate(units):
        text += (unit.joiner if index else "") + unit.text
    return text.strip()


def chunk_sections(
    sections: Sequence[Section],
    count: TokenCounter,
    *,
    max_tokens: int = 200,
    overlap: int = 40,
) -> list[ChunkDraft]:
    """Chunks for a document's sections, numbered from 0 in reading order."""
    if max_tokens < 8:
        raise ValueError("max_tokens must be at least 8")
    if overlap < 0 or overlap >= max_tokens:
        raise ValueError("overlap must be between 0 and max_tokens - 1")
    drafts: list[ChunkDraft] = []
    for section in sections:
        units = _section_units(section, count, max_tokens)
        for group in _pack(units, max_tokens, overlap):
            drafts.append(
                ChunkDraft(
                    ordinal=len(drafts),
                    text=_join(group),
                    token_count=sum(unit.tokens for unit in group),
                    locator=section.locator,
                    heading=" > ".join(section.headings),
                    page=section.page,
                )
            )
    return drafts


def _pack(units: list[_Unit], max_tokens: int, overlap: int) -> list[list[_Unit]]:
    groups: list[list[_Unit]] = []
    current: list[_Unit] = []
    tokens = 0
    fresh = 0  # units in `current` not already emitted in the previous chunk
    for unit in units:
        if current and tokens + unit.tokens > max_tokens:
            groups.append(current)
            # Carry whole trailing sentences, up to `overlap` tokens, into the next chunk.
            carried: list[_Unit] = []
            carried_tokens = 0
            for previous in reversed(current):
                if carried_tokens + previous.tokens > overlap:
                    break
                if carried_tokens + previous.tokens + unit.tokens > max_tokens:
                    break
                carried.insert(0, previous)
                carried_tokens += previous.tokens
            current, tokens, fresh = carried, carried_tokens, 0
        current.append(unit)
        tokens += unit.tokens
        fresh += 1
    if current and fresh:
        groups.append(current)
    return groups
