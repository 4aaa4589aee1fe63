"""Fit each skill's BKT parameters of a course from its attempts."""

from __future__ import annotations

import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from knowledge.models import Course
from learners import services
from learners.models import SkillParameters


class Command(BaseCommand):
    help = "Fit BKT parameters per skill from logged attempts (and refresh items and the policy)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--course", required=True, help="course slug")
        parser.add_argument("--forgets", action="store_true", help="also fit p(F), forgetting")
        parser.add_argument("--restarts", type=int, default=10, help="EM random restarts")
        parser.add_argument(
            "--skip-items",
            action="store_true",
            help="do not recalibrate items or retrain the policy",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        course = Course.objects.filter(slug=options["course"]).first()
        if course is None:
            raise CommandError(f"no course {options['course']!r}")
        if options["restarts"] < 1:
            raise CommandError("--restarts must be at least 1")
        started = time.perf_counter()
        used = services.fit_course(
            course=course, forgets=options["forgets"], restarts=options["restarts"]
        )
        calibrated = transitions = 0
        if not options["skip_items"]:
            calibrated = services.calibrate_items(course=course)
            transitions = services.train_policy(course=course)
        for row in SkillParameters.objects.filter(
            skill__course=course, fitted_at__isnull=False
        ).select_related("skill"):
            fitted = row.fitted_params()
            if fitted is not None and row.skill.name in used:
                self.stderr.write(
                    f"{row.skill.name}: "
                    + ", ".join(f"{k}={v:.3f}" for k, v in fitted.as_dict().items())
                )
        self.stdout.write(
            json.dumps(
                {
                    "course": course.slug,
                    "skills_fitted": len(used),
                    "attempts": sum(used.values()),
                    "items_calibrated": calibrated,
                    "policy_transitions": transitions,
                    "seconds": round(time.perf_counter() - started, 2),
                }
            )
        )
