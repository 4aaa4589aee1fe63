"""What every parser returns, and the one error type ingestion reports to the instructor."""

from __future__ import annotations

from dataclasses import dataclass, field

from knowledge.chunking import Section


class IngestError(Exception):
    """A document cannot be ingested; the message is shown to the instructor as is."""


@dataclass(frozen=True)
class Limits:
    docx_max_uncompressed_bytes: int = 200 * 1024 * 1024
    docx_max_entries: int = 2000


@dataclass
class ParsedDocument:
    sections: list[Section] = field(default_factory=list)
    title: str = ""

    def text_length(self) -> int:
        return sum(len(section.text.strip()) for section in self.sections)
