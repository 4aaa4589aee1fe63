"""Build small test documents in memory from our own text: PDF (fpdf2), DOCX (python-docx),
HTML, zip archives and a PNG. Nothing is downloaded; every file is made here."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Sequence

import docx
from fpdf import FPDF
from fpdf.enums import XPos, YPos


def pdf_bytes(
    pages: Sequence[Sequence[str]],
    *,
    title: str = "",
    header: str = "",
    footer: str = "",
    footer_page_numbers: bool = False,
    owner_password: str = "",
    user_password: str = "",
) -> bytes:
    """A PDF with one page per entry; each entry is a list of lines written one per line.

    `header` is written at the top of every page, `footer` and (with `footer_page_numbers`)
    "Page N of M" at the bottom of every page: the running furniture ingestion should drop.
    """
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(auto=False)
    if title:
        pdf.set_title(title)
    if owner_password:
        pdf.set_encryption(owner_password=owner_password, user_password=user_password)
    total = len(pages)
    for number, lines in enumerate(pages, start=1):
        pdf.add_page()
        pdf.set_font("Helvetica", size=11)
        if header:
            pdf.set_xy(20, 12)
            pdf.cell(0, 6, header, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.set_xy(20, 30)
        for line in lines:
            pdf.set_x(20)
            pdf.cell(0, 6, line, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        if footer:
            pdf.set_xy(20, 274)
            pdf.cell(0, 6, footer)
        if footer_page_numbers:
            pdf.set_xy(20, 281)
            pdf.cell(0, 6, f"Page {number} of {total}")
    return bytes(pdf.output())


def pdf_without_text() -> bytes:
    """A one-page PDF holding only drawn shapes: no text layer at all (like a scan)."""
    pdf = FPDF(format="A4")
    pdf.add_page()
    pdf.set_fill_color(40, 90, 160)
    pdf.rect(30, 30, 120, 80, style="F")
    pdf.line(30, 150, 180, 200)
    pdf.image(io.BytesIO(png_bytes(width=32, height=32)), x=40, y=220, w=40)
    return bytes(pdf.output())


Block = tuple[str, str]  # (python-docx style name, text)


def docx_bytes(blocks: Sequence[Block], *, title: str = "") -> bytes:
    """A DOCX with one paragraph per (style, text); style "table" makes a row of a table
    from text split on "|"."""
    document = docx.Document()
    if title:
        document.core_properties.title = title
    for style, text in blocks:
        if style == "table":
            cells = [cell.strip() for cell in text.split("|")]
            table = document.add_table(rows=1, cols=len(cells))
            for cell, value in zip(table.rows[0].cells, cells, strict=True):
                cell.text = value
        else:
            document.add_paragraph(text, style=style)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2025, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def zip_declaring_huge_size(declared: int) -> bytes:
    """A small valid DOCX-looking zip whose central directory claims `declared` bytes for
    word/document.xml: a zip bomb as its directory describes it, checked without inflating."""
    data = zip_bytes(
        {
            "[Content_Types].xml": b"<Types/>",
            "word/document.xml": b"<w:document/>",
        }
    )
    # Central directory header: signature PK\x01\x02, uncompressed size at offset 24 (4 bytes).
    marker = b"PK\x01\x02"
    patched = bytearray(data)
    start = 0
    while True:
        index = patched.find(marker, start)
        if index < 0:
            break
        name_length = struct.unpack_from("<H", patched, index + 28)[0]
        name = bytes(patched[index + 46 : index + 46 + name_length])
        if name == b"word/document.xml":
            struct.pack_into("<I", patched, index + 24, declared)
        start = index + 4
    return bytes(patched)


def png_bytes(*, width: int = 4, height: int = 4) -> bytes:
    """A small grey PNG image."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
