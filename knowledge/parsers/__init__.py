"""Document parsers, one module per format with the same `parse(data, *, limits)` signature.

Adding a format means copying a sibling module and registering its extensions below.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from knowledge.parsers import docx, html, markdown, pdf, text
from knowledge.parsers.base import IngestError, Limits, ParsedDocument

__all__ = ["SUPPORTED_EXTENSIONS", "IngestError", "Limits", "ParsedDocument", "parse"]

_PARSERS: dict[str, ModuleType] = {
    "pdf": pdf,
    "docx": docx,
    "html": html,
    "htm": html,
    "md": markdown,
    "markdown": markdown,
    "txt": text,
    "text": text,
}
SUPPORTED_EXTENSIONS = tuple(sorted(_PARSERS))

_MAGIC: list[tuple[bytes, str]] = [
    (b"%PDF-", "a PDF"),
    (b"PK\x03\x04", "a zip archive (DOCX or similar)"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x7fELF", "a program"),
    (b"\xd0\xcf\x11\xe0", "an old Office file (DOC/XLS)"),
]


def sniff(data: bytes) -> str | None:
    """What the bytes look like, from their first bytes, when recognisable."""
    head = data[:1024].lstrip()
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


def _expect(extension: str) -> Callable[[str | None], bool]:
    if extension == "pdf":
        return lambda kind: kind == "a PDF"
    if extension == "docx":
        return lambda kind: kind == "a zip archive (DOCX or similar)"
    return lambda kind: kind is None


def parse(data: bytes, extension: str, *, limits: Limits) -> ParsedDocument:
    """Parse bytes named with `extension`; IngestError says plainly what is wrong."""
    extension = extension.lower().lstrip(".")
    module = _PARSERS.get(extension)
    if module is None:
        raise IngestError(
            f"unsupported file type .{extension or '?'}; "
            f"supported: {', '.join('.' + ext for ext in SUPPORTED_EXTENSIONS)}"
        )
    if not data.strip():
        raise IngestError("the file is empty")
    kind = sniff(data)
    if not _expect(extension)(kind):
        looks = kind or "text"
        raise IngestError(
            f"the file's content does not match its .{extension} extension (it looks like {looks})"
        )
    parsed: ParsedDocument = module.parse(data, limits=limits)
    if parsed.text_length() == 0:
        raise IngestError("no extractable text in the file")
    return parsed
