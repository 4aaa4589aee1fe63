"""Text clean-up shared by the parsers: pure functions, no I/O."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

_HYPHEN_BREAK = re.compile(r"(\w)(?:-\n|[\ufffe\u00ad]\n?)(\w)")
_SPACES = re.compile(r"[ \t\u00a0]+")
_PAGE_NUMBER = re.compile(r"^\s*(?:page\s*)?\d{1,4}(?:\s*(?:of|/)\s*\d{1,4})?\s*$", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def normalise(text: str) -> str:
    """Unify line ends and spaces, drop control characters, trim each line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
    text = _CONTROL.sub("", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def join_hyphenated(text: str) -> str:
    """'main-\\ntenance' -> 'maintenance' (a word broken at a line end)."""
    return _HYPHEN_BREAK.sub(r"\1\2", text)


def drop_page_furniture(pages: Sequence[str]) -> list[str]:
    """Remove page numbers and the running headers or footers repeated on most pages."""
    if not pages:
        return []
    first_last: Counter[str] = Counter()
    for page in pages:
        lines = [line.strip() for line in page.split("\n") if line.strip()]
        edge = set(lines[:2] + lines[-2:])
        first_last.update(_furniture_key(line) for line in edge)
    repeated = (
        {key for key, seen in first_last.items() if seen >= max(3, len(pages) * 0.6)}
        if len(pages) >= 3
        else set()
    )
    cleaned = []
    for page in pages:
        # Only the top and bottom lines can be furniture: a lone "150" mid-page is content.
        lines = page.split("\n")
        filled = [index for index, line in enumerate(lines) if line.strip()]
        edges = set(filled[:2] + filled[-2:])
        kept = [
            line
            for index, line in enumerate(lines)
            if index not in edges
            or not (_PAGE_NUMBER.match(line) or _furniture_key(line.strip()) in repeated)
        ]
        cleaned.append("\n".join(kept))
    return cleaned


def _furniture_key(line: str) -> str:
    # "Page 3" and "Page 4" count as the same running footer.
    return re.sub(r"\d+", "#", line.lower())


def reflow(text: str) -> str:
    """Join lines broken inside paragraphs (as PDF text comes out) but keep list items apart."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.split("\n") if line.strip()]
        merged: list[str] = []
        for line in lines:
            starts_item = bool(re.match(r"^\s*(?:[-*\u2022]|\d+[.)])\s+", line))
            if (
                merged
                and not starts_item
                and not merged[-1].rstrip().endswith((".", ":", "?", "!"))
            ):
                merged[-1] = merged[-1].rstrip() + " " + line.strip()
            else:
                merged.append(line.strip())
        paragraphs.append("\n".join(merged))
    return "\n\n".join(p for p in paragraphs if p)
