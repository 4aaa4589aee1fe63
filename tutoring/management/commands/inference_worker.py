"""`python manage.py inference_worker`: answer generation requests from the channel layer."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tutoring import inference


class Command(BaseCommand):
    help = (
        "Load the GGUF model and answer generation requests from a named channel of the "
        "channel layer, one at a time, until SIGTERM or SIGINT (which abandon the answer in "
        "progress with the error 'worker stopping'). Several workers may share the channel."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--channel",
            default=inference.INFERENCE_CHANNEL,
            help=f"the named channel to take requests from (default {inference.INFERENCE_CHANNEL})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        warming = None
        if settings.TUTOR_INFERENCE_JUDGE:
            # The support check embeds sentences: load that model while the GGUF loads.
            from knowledge import embedding

            warming = threading.Thread(target=embedding.warm_up, daemon=True)
            warming.start()
        try:
            asyncio.run(inference.serve(channel=options["channel"], warming=warming))
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
