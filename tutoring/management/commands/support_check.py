"""`python manage.py support_check PASSAGES.txt ANSWER.txt`: one JSON line per sentence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from knowledge import embedding
from tutoring import support


class Command(BaseCommand):
    help = (
        "Check every sentence of ANSWER.txt against PASSAGES.txt (passages separated by blank "
        "lines) with the chat's own support check; print one JSON line per sentence with "
        "`sentence`, `supported` and `score` (and the signals behind them)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("passages", type=Path)
        parser.add_argument("answer", type=Path)
        parser.add_argument(
            "--question",
            default="",
            help="the learner's question: its figures count as known, and a bare yes or no "
            "is judged as the answer to it",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        texts = []
        for path in (options["passages"], options["answer"]):
            try:
                texts.append(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError) as exc:
                raise CommandError(f"cannot read {path}: {exc}") from exc
        passages = support.read_passages(texts[0])
        if not passages:
            raise CommandError(f"{options['passages']} holds no passage")
        for judged in support.check(texts[1], passages, embedding.embed, options["question"]):
            self.stdout.write(json.dumps(judged.as_json(), ensure_ascii=False))
