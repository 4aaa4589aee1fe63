"""Build the binary demo documents for the Industrial Maintenance demo course.

Reads the Markdown-like sources in ``knowledge/demo/sources/`` and writes:

- ``documents/bearings-and-vibration.pdf`` (fpdf2): one PDF page per ``<<<PAGE>>>`` section.
- ``documents/confined-space-entry.docx`` (python-docx): Heading 1/2/3, List Bullet and
  normal paragraphs.

Both outputs are deterministic: fixed metadata dates and fixed ZIP entry timestamps, so
rebuilding from unchanged sources gives byte-identical files with the same library versions.
After building, the script checks that every PDF page has extractable text (pypdfium2) and
that every DOCX heading uses a built-in Heading style (python-docx).

Usage::

    python knowledge/demo/build_documents.py
"""

from __future__ import annotations

import io
import re
import sys
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import docx
import pypdfium2 as pdfium
from fpdf import FPDF
from fpdf.enums import XPos, YPos

HERE = Path(__file__).resolve().parent
SOURCES_DIR = HERE / "sources"
DOCUMENTS_DIR = HERE / "documents"

PDF_SOURCE = SOURCES_DIR / "bearings-and-vibration.md"
PDF_OUTPUT = DOCUMENTS_DIR / "bearings-and-vibration.pdf"
DOCX_SOURCE = SOURCES_DIR / "confined-space-entry.md"
DOCX_OUTPUT = DOCUMENTS_DIR / "confined-space-entry.docx"

AUTHOR = "Adaptive Tutor Demo Course Team"
SUBJECT = "Industrial Maintenance & Operational Safety (demo course)"
FIXED_DATE = datetime(2025, 1, 1, 0, 0, 0, tzinfo=UTC)
ZIP_TIMESTAMP = (2025, 1, 1, 0, 0, 0)
PAGE_BREAK = "<<<PAGE>>>"
MIN_WORDS_PER_PAGE = 50

BlockKind = Literal["heading", "paragraph", "bullet", "number"]

HEADING_RE = re.compile(r"^(#{1,3})\s+(.*\S)\s*$")
BULLET_RE = re.compile(r"^[-*]\s+(.*\S)\s*$")
NUMBER_RE = re.compile(r"^(\d+)\.\s+(.*\S)\s*$")


@dataclass(frozen=True)
class Block:
    """One structural element of a source document."""

    kind: BlockKind
    text: str
    level: int = 0  # heading level (1-3); unused for other kinds
    number: int = 0  # list item number for "number" blocks


def parse_blocks(source: str) -> list[Block]:
    """Parse a small Markdown subset: ``#``-``###`` headings, ``-`` and ``1.`` lists, paragraphs.

    Consecutive plain lines are joined into one paragraph; a blank line ends a paragraph.
    """
    blocks: list[Block] = []
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            blocks.append(Block("paragraph", " ".join(paragraph)))
            paragraph.clear()

    for raw_line in source.splitlines():
        line = raw_line.strip()
        if not line:
            flush()
            continue
        if heading := HEADING_RE.match(line):
            flush()
            blocks.append(Block("heading", heading.group(2), level=len(heading.group(1))))
        elif bullet := BULLET_RE.match(line):
            flush()
            blocks.append(Block("bullet", bullet.group(1)))
        elif numbered := NUMBER_RE.match(line):
            flush()
            blocks.append(Block("number", numbered.group(2), number=int(numbered.group(1))))
        else:
            paragraph.append(line)
    flush()
    return blocks


def split_pages(source: str) -> list[str]:
    """Split a source on lines that contain only the page marker."""
    pages: list[list[str]] = [[]]
    for line in source.splitlines():
        if line.strip() == PAGE_BREAK:
            pages.append([])
        else:
            pages[-1].append(line)
    return ["\n".join(page).strip() for page in pages if "\n".join(page).strip()]


def document_title(blocks: list[Block]) -> str:
    """Return the text of the first level-1 heading."""
    for block in blocks:
        if block.kind == "heading" and block.level == 1:
            return block.text
    raise ValueError("source has no level-1 heading")


def check_latin1(text: str, source: Path) -> None:
    """Fail early if text cannot be drawn with the PDF core fonts (latin-1)."""
    try:
        text.encode("latin-1")
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end]
        raise ValueError(f"{source.name}: non latin-1 character {bad!r}") from exc


# --------------------------------------------------------------------------------------
# PDF
# --------------------------------------------------------------------------------------

HEADING_SIZES = {1: 17.0, 2: 13.0, 3: 11.5}
BODY_SIZE = 10.5
LINE_HEIGHT = 5.2
LIST_INDENT = 6.0


def render_pdf_heading(pdf: FPDF, block: Block) -> None:
    size = HEADING_SIZES.get(block.level, HEADING_SIZES[3])
    pdf.ln(3 if pdf.get_y() > pdf.t_margin + 1 else 0)
    pdf.set_font("Helvetica", style="B", size=size)
    pdf.multi_cell(0, size * 0.5, block.text, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(2)


def render_pdf_list_item(pdf: FPDF, marker: str, text: str) -> None:
    pdf.set_font("Helvetica", size=BODY_SIZE)
    pdf.set_x(pdf.l_margin + 2)
    pdf.cell(LIST_INDENT - 2, LINE_HEIGHT, marker)
    pdf.multi_cell(pdf.epw - LIST_INDENT, LINE_HEIGHT, text, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(1)


def render_pdf_paragraph(pdf: FPDF, text: str) -> None:
    pdf.set_font("Helvetica", size=BODY_SIZE)
    pdf.multi_cell(0, LINE_HEIGHT, text, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(2)


def build_pdf(source_path: Path, output_path: Path) -> int:
    """Render one PDF page per page section of the source. Returns the page count."""
    source = source_path.read_text(encoding="utf-8")
    check_latin1(source, source_path)
    pages = split_pages(source)
    title = document_title(parse_blocks(source))

    pdf = FPDF(orientation="P", unit="mm", format="A4")
    pdf.set_title(title)
    pdf.set_author(AUTHOR)
    pdf.set_subject(SUBJECT)
    pdf.set_keywords("bearings, vibration analysis, maintenance, demo course")
    pdf.set_creator("knowledge/demo/build_documents.py")
    pdf.set_lang("en")
    pdf.set_creation_date(FIXED_DATE)
    pdf.set_margins(left=20, top=20, right=20)
    pdf.set_auto_page_break(auto=True, margin=18)

    for page_number, page_source in enumerate(pages, start=1):
        pdf.add_page()
        previous: BlockKind | None = None
        for block in parse_blocks(page_source):
            if previous in ("bullet", "number") and block.kind not in ("bullet", "number"):
                pdf.ln(1)
            previous = block.kind
            if block.kind == "heading":
                render_pdf_heading(pdf, block)
            elif block.kind == "bullet":
                render_pdf_list_item(pdf, "-", block.text)
            elif block.kind == "number":
                render_pdf_list_item(pdf, f"{block.number}.", block.text)
            else:
                render_pdf_paragraph(pdf, block.text)
        if pdf.page_no() != page_number:
            raise ValueError(
                f"{source_path.name}: section {page_number} does not fit on one page; "
                "shorten it or split it with another page marker"
            )

    output_path.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(output_path))
    return len(pages)


# --------------------------------------------------------------------------------------
# DOCX
# --------------------------------------------------------------------------------------


def normalise_zip(data: bytes) -> bytes:
    """Rewrite a ZIP container with fixed entry timestamps so output is reproducible."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(data)) as src,
        zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as dst,
    ):
        for item in src.infolist():
            info = zipfile.ZipInfo(item.filename, date_time=ZIP_TIMESTAMP)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            dst.writestr(info, src.read(item.filename))
    return out.getvalue()


def build_docx(source_path: Path, output_path: Path) -> int:
    """Render the source as a Word document. Returns the number of headings written."""
    source = source_path.read_text(encoding="utf-8")
    blocks = parse_blocks(source)

    document = docx.Document()
    properties = document.core_properties
    properties.title = document_title(blocks)
    properties.author = AUTHOR
    properties.subject = SUBJECT
    properties.keywords = "confined space, hazard identification, PPE, demo course"
    properties.last_modified_by = AUTHOR
    properties.created = FIXED_DATE.replace(tzinfo=None)
    properties.modified = FIXED_DATE.replace(tzinfo=None)
    properties.last_printed = FIXED_DATE.replace(tzinfo=None)
    properties.revision = 1

    headings = 0
    for block in blocks:
        if block.kind == "heading":
            document.add_heading(block.text, level=block.level)
            headings += 1
        elif block.kind == "bullet":
            document.add_paragraph(block.text, style="List Bullet")
        elif block.kind == "number":
            document.add_paragraph(block.text, style="List Number")
        else:
            document.add_paragraph(block.text)

    buffer = io.BytesIO()
    document.save(buffer)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    output_path.write_bytes(normalise_zip(buffer.getvalue()))
    return headings


# --------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------


def verify_pdf(output_path: Path, expected_pages: int) -> list[int]:
    """Check page count and that every page has extractable text; return words per page."""
    pdf = pdfium.PdfDocument(str(output_path))
    try:
        if len(pdf) != expected_pages:
            raise ValueError(f"{output_path.name}: {len(pdf)} pages, expected {expected_pages}")
        words_per_page: list[int] = []
        for index in range(len(pdf)):
            page = pdf[index]
            text_page = page.get_textpage()
            text = str(text_page.get_text_range())
            text_page.close()
            page.close()
            words = len(text.split())
            if words < MIN_WORDS_PER_PAGE:
                raise ValueError(f"{output_path.name}: page {index + 1} has little text")
            words_per_page.append(words)
        title = pdf.get_metadata_dict().get("Title")
        if not title:
            raise ValueError(f"{output_path.name}: missing Title metadata")
        return words_per_page
    finally:
        pdf.close()


def verify_docx(output_path: Path, source_path: Path) -> int:
    """Check that headings in the DOCX use Heading 1/2/3 styles matching the source."""
    expected = [
        (block.text, f"Heading {block.level}")
        for block in parse_blocks(source_path.read_text(encoding="utf-8"))
        if block.kind == "heading"
    ]
    document = docx.Document(str(output_path))
    found = [
        (paragraph.text, paragraph.style.name)
        for paragraph in document.paragraphs
        if paragraph.style is not None
        and paragraph.style.name is not None
        and paragraph.style.name.startswith("Heading")
    ]
    if found != expected:
        raise ValueError(f"{output_path.name}: headings do not match the source")
    if not document.core_properties.title or document.core_properties.author != AUTHOR:
        raise ValueError(f"{output_path.name}: missing core properties")
    return len(found)


def main() -> None:
    pages = build_pdf(PDF_SOURCE, PDF_OUTPUT)
    words_per_page = verify_pdf(PDF_OUTPUT, pages)
    print(f"wrote {PDF_OUTPUT.relative_to(HERE)}: {pages} pages, words per page {words_per_page}")

    build_docx(DOCX_SOURCE, DOCX_OUTPUT)
    headings = verify_docx(DOCX_OUTPUT, DOCX_SOURCE)
    print(f"wrote {DOCX_OUTPUT.relative_to(HERE)}: {headings} headings with Heading styles")


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
