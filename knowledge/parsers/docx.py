"""DOCX through python-docx, after checking the zip archive against size and entry limits."""

from __future__ import annotations

import io
import zipfile

import docx
from docx.document import Document as DocxDocument
from docx.table import Table
from docx.text.paragraph import Paragraph

from knowledge.chunking import Section
from knowledge.cleaning import normalise
from knowledge.parsers.base import IngestError, Limits, ParsedDocument


def check_archive(data: bytes, limits: Limits) -> None:
    """Refuse a zip bomb from its directory alone, before anything is inflated."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise IngestError("the DOCX file is corrupt (not a readable zip archive)") from exc
    with archive:
        entries = archive.infolist()
        if len(entries) > limits.docx_max_entries:
            raise IngestError(
                f"the DOCX archive has {len(entries)} entries, over the limit of "
                f"{limits.docx_max_entries}"
            )
        inflated = sum(entry.file_size for entry in entries)
        if inflated > limits.docx_max_uncompressed_bytes:
            raise IngestError(
                f"the DOCX archive would inflate to {inflated:,} bytes, over the limit of "
                f"{limits.docx_max_uncompressed_bytes:,}"
            )
        if "word/document.xml" not in archive.namelist():
            raise IngestError("the file is a zip archive but not a Word document (DOCX)")


def parse(data: bytes, *, limits: Limits) -> ParsedDocument:
    check_archive(data, limits)
    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # python-docx raises several types for a broken package
        raise IngestError(f"the DOCX file is corrupt or unreadable ({exc})") from exc
    return ParsedDocument(sections=_sections(document), title=document.core_properties.title or "")


def _sections(document: DocxDocument) -> list[Section]:
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    blocks: list[str] = []

    def flush() -> None:
        text = normalise("\n\n".join(blocks))
        if text:
            sections.append(Section(text=text, headings=tuple(name for _, name in path)))
        blocks.clear()

    for block in document.iter_inner_content():
        if isinstance(block, Table):
            for row in block.rows:
                cells = [cell.text.strip() for cell in row.cells]
                if any(cells):
                    blocks.append(" | ".join(cells))
            continue
        assert isinstance(block, Paragraph)
        text = block.text.strip()
        if not text:
            continue
        level = _heading_level(block)
        if level is not None:
            flush()
            while path and path[-1][0] >= level:
                path.pop()
            path.append((level, text))
        elif _is_list(block):
            blocks.append(f"- {text}")
        else:
            blocks.append(text)
    flush()
    return sections


def _heading_level(paragraph: Paragraph) -> int | None:
    name = paragraph.style.name if paragraph.style is not None else ""
    if name == "Title":
        return 0  # above Heading 1, so the title stays at the head of every heading path
    if name.startswith("Heading "):
        suffix = name.removeprefix("Heading ").strip()
        return int(suffix) if suffix.isdigit() else None
    return None


def _is_list(paragraph: Paragraph) -> bool:
    name = paragraph.style.name if paragraph.style is not None else ""
    return name.startswith("List")
