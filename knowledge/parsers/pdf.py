"""PDF through pypdfium2 (PDFium): one section per page, so each chunk cites its page."""

from __future__ import annotations

import pypdfium2 as pdfium

from knowledge.chunking import Section
from knowledge.cleaning import drop_page_furniture, join_hyphenated, normalise, reflow
from knowledge.parsers.base import IngestError, Limits, ParsedDocument

# PDFium's error codes for a document it cannot open.
_PASSWORD_ERROR = 4


def parse(data: bytes, *, limits: Limits) -> ParsedDocument:
    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if getattr(exc, "err_code", None) == _PASSWORD_ERROR or "password" in str(exc).lower():
            raise IngestError("the PDF is encrypted (password protected)") from exc
        raise IngestError(f"the PDF is corrupt or unreadable ({exc})") from exc
    try:
        raw_pages: list[str] = []
        for index in range(len(pdf)):
            page = pdf[index]
            textpage = page.get_textpage()
            raw_pages.append(textpage.get_text_range())
            textpage.close()
            page.close()
        title = (pdf.get_metadata_value("Title") or "").strip()
    except pdfium.PdfiumError as exc:
        raise IngestError(f"the PDF is corrupt or unreadable ({exc})") from exc
    finally:
        pdf.close()
    pages = drop_page_furniture([normalise(page) for page in raw_pages])
    sections = []
    for number, text in enumerate(pages, start=1):
        text = reflow(join_hyphenated(text))
        if text.strip():
            sections.append(Section(text=text, page=number))
    if not sections:
        raise IngestError(
            "no extractable text: the PDF has no text layer (a scan?); run OCR on it first"
        )
    return ParsedDocument(sections=sections, title=title)
