"""HTML through trafilatura, which keeps the main content and drops navigation and boilerplate."""

from __future__ import annotations

import trafilatura

from knowledge.parsers.base import IngestError, Limits, ParsedDocument
from knowledge.parsers.markdown import parse_markdown_text
from knowledge.parsers.text import decode_text


def parse(data: bytes, *, limits: Limits) -> ParsedDocument:
    source = decode_text(data, "HTML")
    if "<" not in source:
        raise IngestError("the file has no HTML markup")
    markdown = trafilatura.extract(
        source,
        output_format="markdown",
        include_formatting=True,
        include_tables=True,
        include_comments=False,
        include_links=False,
        include_images=False,
        favor_recall=True,
        deduplicate=True,
    )
    parsed = parse_markdown_text(markdown or "")
    metadata = trafilatura.extract_metadata(source)
    if metadata is not None and metadata.title:
        parsed.title = metadata.title
    return parsed
