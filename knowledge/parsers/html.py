"""HTML: boilerplate pruned with lxml, main content extracted by trafilatura.

trafilatura finds the main content of real-world pages (and drops navigation, ads, comments and
footers), but on a short page it falls back to a flat extraction that loses the headings. There,
the pruned page's own structure (h1-h6, paragraphs, list items, table rows) is used instead, so
every passage keeps its heading path.
"""

from __future__ import annotations

import re

import lxml.html
import trafilatura
from lxml.etree import ParserError, _Element

from knowledge.parsers.base import IngestError, Limits, ParsedDocument
from knowledge.parsers.markdown import parse_markdown_text
from knowledge.parsers.text import decode_text

_BOILERPLATE_TAGS = (
    "script",
    "style",
    "noscript",
    "template",
    "nav",
    "header",
    "footer",
    "aside",
    "form",
    "iframe",
    "svg",
    "button",
)
_BOILERPLATE_NAMES = re.compile(
    r"cookie|consent|gdpr|banner|breadcrumb|navbar|sidebar|skip-link|share|social|newsletter",
    re.IGNORECASE,
)
_BLOCKS = {"p", "li", "tr", "pre", "blockquote", "dt", "dd", "figcaption"}
_HEADING = re.compile(r"^h([1-6])$")


def parse(data: bytes, *, limits: Limits) -> ParsedDocument:
    source = decode_text(data, "HTML")
    if "<" not in source:
        raise IngestError("the file has no HTML markup")
    try:
        tree = lxml.html.document_fromstring(source)
    except (ParserError, ValueError) as exc:
        raise IngestError(f"the HTML could not be parsed ({exc})") from exc
    title = (tree.findtext(".//title") or "").strip()
    _prune(tree)
    pruned = lxml.html.tostring(tree, encoding="unicode")
    markdown = trafilatura.extract(
        pruned,
        output_format="markdown",
        include_formatting=True,
        include_tables=True,
        include_comments=False,
        include_links=False,
        include_images=False,
        favor_recall=True,
        # trafilatura's de-duplication is process-wide: a long-running worker would drop
        # paragraphs it has seen in earlier documents.
        deduplicate=False,
    )
    has_headings = tree.xpath("boolean(//h1|//h2|//h3|//h4|//h5|//h6)")
    if not markdown or (has_headings and not re.search(r"^#{1,6} ", markdown, re.MULTILINE)):
        markdown = _structure_as_markdown(_content_root(tree))
    parsed = parse_markdown_text(markdown)
    metadata = trafilatura.extract_metadata(source)
    # trafilatura's title drops the site-name suffix ("Lubrication - Plant Notes").
    parsed.title = (metadata.title if metadata is not None else "") or title or parsed.title
    return parsed


def _prune(tree: _Element) -> None:
    doomed = [
        element
        for element in tree.iter()
        if isinstance(element.tag, str)
        and (
            element.tag in _BOILERPLATE_TAGS
            or element.get("role") in ("navigation", "banner", "contentinfo", "complementary")
            or _BOILERPLATE_NAMES.search(f"{element.get('id', '')} {element.get('class', '')}")
        )
    ]
    for element in doomed:
        if element.getparent() is not None:
            element.drop_tree()


def _content_root(tree: _Element) -> _Element:
    for path in ("//main", "//article", "//*[@role='main']", "//body"):
        found = tree.xpath(path)
        if found:
            return found[0]
    return tree


def _structure_as_markdown(root: _Element) -> str:
    lines: list[str] = []
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue
        heading = _HEADING.match(element.tag)
        if heading:
            lines.append("#" * int(heading.group(1)) + " " + _text(element))
        elif element.tag in _BLOCKS and not _inside_block(element):
            text = _text(element)
            if text:
                lines.append(("- " if element.tag == "li" else "") + text)
    return "\n\n".join(line for line in lines if line.strip("#- "))


def _inside_block(element: _Element) -> bool:
    parent = element.getparent()
    while parent is not None:
        if parent.tag in _BLOCKS:
            return True
        parent = parent.getparent()
    return False


def _text(element: _Element) -> str:
    return " ".join(" ".join(element.itertext()).split())
