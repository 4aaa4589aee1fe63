"""Rotate the tool's signing key; the replaced key stays published for a grace period."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from lti_tool.models import Key

from lti import keys


class Command(BaseCommand):
    help = (
        "Make a new signing key for LTI (used at once) and retire keys replaced more than the "
        "grace period ago. The key set at /lti/jwks/ keeps the old key until then."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--grace-days",
            type=float,
            default=None,
            help="days a replaced key stays published "
            f"(default {settings.TUTOR_LTI_KEY_GRACE_DAYS})",
        )
        parser.add_argument(
            "--retire-only",
            action="store_true",
            help="make no new key: only retire keys past their grace period",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["grace_days"]
        if days is not None and days < 0:
            raise CommandError("--grace-days must not be negative")
        grace = timedelta(days=days) if days is not None else None
        if options["retire_only"]:
            new = None
            retired = keys.retire_replaced_keys(grace=grace)
        else:
            new, retired = keys.rotate_keys(grace=grace)
        self.stdout.write(
            json.dumps(
                {
                    "new_key": str(new) if new else None,
                    "retired": retired,
                    "published": [str(key) for key in Key.objects.active()],
                }
            )
        )
