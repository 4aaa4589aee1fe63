"""Add files or folders of course material to a course, optionally waiting for ingestion."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from django.core.files import File
from django.core.management.base import BaseCommand, CommandError, CommandParser

from knowledge import ingestion, services
from knowledge.models import Course, Document
from knowledge.parsers import SUPPORTED_EXTENSIONS

logger = logging.getLogger(__name__)


def _files(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(
                sorted(
                    child
                    for child in path.rglob("*")
                    if child.is_file() and child.suffix.lower().lstrip(".") in SUPPORTED_EXTENSIONS
                )
            )
        elif path.is_file():
            found.append(path)
        else:
            raise CommandError(f"{raw}: no such file or folder")
    return found


class Command(BaseCommand):
    help = "Upload course material (PDF, DOCX, HTML, Markdown, text) from files or folders."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", metavar="PATH")
        parser.add_argument("--course", required=True, help="course slug")
        parser.add_argument("--create", action="store_true", help="create the course if missing")
        parser.add_argument("--title", default="", help="course title when --create makes it")
        parser.add_argument(
            "--wait",
            action="store_true",
            help="wait until every document is ready or failed, then print a JSON summary",
        )
        parser.add_argument(
            "--sync",
            action="store_true",
            help="ingest in this process instead of the background cluster (implies --wait)",
        )
        parser.add_argument(
            "--timeout", type=float, default=1800.0, help="seconds --wait waits at most"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        slug: str = options["course"]
        course = Course.objects.filter(slug=slug).first()
        if course is None:
            if not options["create"]:
                raise CommandError(f"no course {slug!r}; add --create to make it")
            title = options["title"] or slug.replace("-", " ").title()
            course = services.create_course(slug=slug, title=title)
            self.stderr.write(f"created course {slug!r}")
        started = time.perf_counter()
        entries: list[dict[str, Any]] = []
        refused = 0
        for path in _files(options["paths"]):
            size = path.stat().st_size  # checked before the file is read
            try:
                services.check_upload(filename=path.name, size=size)
                with path.open("rb") as handle:
                    result = services.add_document(
                        course=course, filename=path.name, content=File(handle, name=path.name)
                    )
            except services.KnowledgeError as exc:
                logger.warning("refused %s: %s", path, exc.message)
                self.stderr.write(f"refused {path}: {exc.message}")
                entries.append({"path": str(path), "status": "refused", "error": exc.message})
                refused += 1
                continue
            state = (
                "queued"
                if result.created
                else "unchanged (identical content already in the course)"
            )
            self.stderr.write(f"{path}: {state}, document {result.document.pk}")
            entries.append(
                {"path": str(path), "id": result.document.pk, "duplicate": not result.created}
            )
        ids = [entry["id"] for entry in entries if "id" in entry]
        if options["sync"]:
            for document_id in ids:
                ingestion.ingest_document(document_id)
        elif options["wait"]:
            self._wait(ids, options["timeout"])
        if not (options["wait"] or options["sync"]):
            if refused:
                sys.exit(1)
            return
        documents = {doc.pk: doc for doc in Document.objects.filter(pk__in=ids)}
        for entry in entries:
            doc = documents.get(entry.get("id", -1))
            if doc is not None:
                entry.update(
                    filename=doc.original_filename,
                    title=doc.title,
                    status=doc.status,
                    chunks=doc.chunks_total,
                    error=doc.error,
                )
        summary = {
            "course": course.slug,
            "documents": entries,
            "ready": sum(1 for entry in entries if entry.get("status") == Document.Status.READY),
            "failed": sum(1 for entry in entries if entry.get("status") == Document.Status.FAILED),
            "refused": refused,
            "seconds": round(time.perf_counter() - started, 2),
        }
        self.stdout.write(json.dumps(summary))
        if summary["failed"] or refused:
            sys.exit(1)

    def _wait(self, ids: list[int], timeout: float) -> None:
        from django_q.status import Stat

        if not Stat.get_all():
            self.stderr.write(
                "warning: no background cluster seems to be running (start `make run` or "
                "`python manage.py qcluster`, or use --sync)"
            )
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            documents = list(Document.objects.filter(pk__in=ids))
            done = sum(doc.chunks_done for doc in documents)
            total = sum(doc.chunks_total for doc in documents)
            finished = sum(1 for doc in documents if doc.is_finished())
            line = f"{finished}/{len(documents)} documents finished, {done}/{total or '?'} chunks"
            if line != last:
                self.stderr.write(line)
                last = line
            if finished == len(documents):
                return
            if time.monotonic() > deadline:
                raise CommandError(f"timed out after {timeout:.0f}s: {line}")
            time.sleep(0.5)
