"""Plain text: short title-like lines between blank lines are headings."""

from __future__ import annotations

import re

from knowledge.chunking import Section
from knowledge.cleaning import normalise
from knowledge.parsers.base import IngestError, Limits, ParsedDocument


def decode_text(data: bytes, kind: str) -> str:
    """Bytes of a text format as str; binary content is refused with a clear reason."""
    head = data[:8192]
    if b"\x00" in head:
        raise IngestError(f"the file's content is binary, not {kind} text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError as exc:
        raise IngestError(f"the file is not readable {kind} text (unknown encoding)") from exc
    return text


def parse(data: bytes, *, limits: Limits) -> ParsedDocument:
    text = normalise(decode_text(data, "plain"))
    blocks = [block.strip() for block in re.split(r"\n\s*\n", text) if block.strip()]
    sections: list[Section] = []
    heading: str | None = None
    body: list[str] = []
    paragraph_start = 1

    def flush(end: int) -> None:
        if not body:
            return
        if heading:
            headings: tuple[str, ...] = (heading,)
        else:
            span = f"{paragraph_start}" if end == paragraph_start else f"{paragraph_start}-{end}"
            headings = (f"paragraphs {span}",)
        sections.append(Section(text="\n\n".join(body), headings=headings))
        body.clear()

    for number, block in enumerate(blocks, start=1):
        if _looks_like_heading(block):
            flush(number - 1)
            heading = block.rstrip(":")
            paragraph_start = number + 1
            continue
        body.append(block)
    flush(len(blocks))
    title = blocks[0] if blocks and _looks_like_heading(blocks[0]) else ""
    return ParsedDocument(sections=sections, title=title)


def _looks_like_heading(block: str) -> bool:
    if "\n" in block or len(block) > 80 or len(block.split()) > 10:
        return False
    if block.endswith((".", "?", "!", ",", ";")):
        return False
    words = [word for word in re.findall(r"[A-Za-z][A-Za-z'/-]*", block) if len(word) > 3]
    return bool(words) and all(word[0].isupper() for word in words)
