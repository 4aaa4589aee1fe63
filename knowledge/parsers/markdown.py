"""Markdown through markdown-it-py: headings give the locator path of the text under them."""

from __future__ import annotations

from markdown_it import MarkdownIt
from markdown_it.token import Token

from knowledge.chunking import Section
from knowledge.cleaning import normalise
from knowledge.parsers.base import Limits, ParsedDocument
from knowledge.parsers.text import decode_text

_md = MarkdownIt("commonmark").enable("table")


def parse(data: bytes, *, limits: Limits) -> ParsedDocument:
    return parse_markdown_text(decode_text(data, "Markdown"))


def parse_markdown_text(source: str) -> ParsedDocument:
    tokens = _md.parse(source)
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    blocks: list[str] = []
    title = ""

    def flush() -> None:
        text = normalise("\n\n".join(blocks))
        if text:
            sections.append(Section(text=text, headings=tuple(name for _, name in path)))
        blocks.clear()

    index = 0
    row: list[str] = []
    while index < len(tokens):
        token = tokens[index]
        if token.type == "heading_open":
            flush()
            level = int(token.tag[1])
            name = _inline_text(tokens[index + 1])
            while path and path[-1][0] >= level:
                path.pop()
            path.append((level, name))
            if level == 1 and not title:
                title = name
            index += 3
            continue
        if token.type == "inline":
            parent = tokens[index - 1].type if index else ""
            content = _inline_text(token)
            if parent in ("th_open", "td_open"):
                row.append(content)
            elif content:
                prefix = "- " if _inside_list(tokens, index) else ""
                blocks.append(prefix + content)
        elif token.type == "tr_close":
            if row:
                blocks.append(" | ".join(row))
            row = []
        elif token.type in ("fence", "code_block") and token.content.strip():
            blocks.append(token.content.strip())
        index += 1
    flush()
    return ParsedDocument(sections=sections, title=title)


def _inline_text(token: Token) -> str:
    if not token.children:
        return token.content.strip()
    parts: list[str] = []
    for child in token.children:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
    return "".join(parts).strip()


def _inside_list(tokens: list[Token], index: int) -> bool:
    # An inline token inside `list_item_open ... paragraph_open inline`.
    return index >= 2 and tokens[index - 2].type == "list_item_open"
