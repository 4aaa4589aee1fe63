"""Search a course's material from the shell: one JSON object per hit."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from knowledge import retrieval
from knowledge.models import Course


class Command(BaseCommand):
    help = "Hybrid search of one course's passages; prints one JSON line per hit."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("query")
        parser.add_argument("--course", required=True, help="course slug")
        parser.add_argument("--k", type=int, default=5, help="how many passages (1-50)")

    def handle(self, *args: Any, **options: Any) -> None:
        course = Course.objects.filter(slug=options["course"]).first()
        if course is None:
            raise CommandError(f"no course {options['course']!r}")
        try:
            hits = retrieval.search(course, options["query"], options["k"])
        except retrieval.SearchError as exc:
            raise CommandError(str(exc)) from exc
        for hit in hits:
            self.stdout.write(
                json.dumps(
                    {
                        "document": hit.document,
                        "filename": hit.filename,
                        "locator": hit.locator,
                        "score": hit.score,
                        "text": hit.text,
                    }
                )
            )
