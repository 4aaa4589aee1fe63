"""Sync the rosters of Moodle courses (NRPS) into the tutor's enrollments."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from lti import services
from lti.models import CourseLink
from lti.platform import PlatformError


class Command(BaseCommand):
    help = (
        "Read each linked Moodle course's members (Names and Role Provisioning) and update the "
        "course's enrollments: new members are enrolled, removed members lose access."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--course", help="only this course (slug); default: every linked one")

    def handle(self, *args: Any, **options: Any) -> None:
        links = CourseLink.objects.select_related(
            "course", "context__deployment__registration"
        ).order_by("course__slug", "pk")
        if options["course"]:
            links = links.filter(course__slug=options["course"])
            if not links.exists():
                raise CommandError(f"course {options['course']!r} is not linked to Moodle")
        failed = 0
        for link in links:
            try:
                result = services.sync_roster(link=link)
            except PlatformError as exc:
                failed += 1
                self.stderr.write(f"{link.course.slug} ({link.context}): {exc}")
                continue
            self.stdout.write(json.dumps(vars(result)))
        if failed:
            raise CommandError(f"{failed} roster(s) could not be read")
