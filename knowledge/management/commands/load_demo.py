"""Load the demo course "Industrial Maintenance & Operational Safety" (idempotent)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.files import File
from django.core.management.base import BaseCommand
from django.db import transaction

from knowledge import services
from knowledge.models import Course, Enrollment, Skill

DEMO_DIR = Path(__file__).resolve().parents[2] / "demo"
SLUG = "industrial-maintenance"
TITLE = "Industrial Maintenance & Operational Safety"
DESCRIPTION = (
    "Safe isolation of energy, confined spaces, protective equipment, lubrication, bearings and "
    "vibration, and planning maintenance so that failures are found before they happen."
)
PASSWORD = "demo"  # demo data only; printed by `make run`
USERS = [
    ("demo-instructor", "Dana", "Instructor", Enrollment.Role.INSTRUCTOR),
    ("demo-learner", "Lee", "Learner", Enrollment.Role.LEARNER),
    ("demo-learner-2", "Sam", "Second", Enrollment.Role.LEARNER),
]


class Command(BaseCommand):
    help = "Create or refresh the demo course, its skills, documents and demo users."

    def handle(self, *args: Any, **options: Any) -> None:
        course = self._course_and_people()
        self._skills(course)
        items = self._items(course)
        queued = 0
        for path in sorted((DEMO_DIR / "documents").iterdir()):
            if path.name.startswith("."):
                continue
            with path.open("rb") as handle:
                result = services.add_document(
                    course=course, filename=path.name, content=File(handle, name=path.name)
                )
            queued += int(result.created)
        total = course.documents.count()
        self.stdout.write(
            f"demo course {SLUG!r}: {course.skills.count()} skills, {items} check questions, "
            f"{total} documents "
            f"({queued} newly queued for ingestion), users "
            + ", ".join(username for username, *_ in USERS)
            + f" (password {PASSWORD!r})"
        )

    @transaction.atomic
    def _course_and_people(self) -> Course:
        course, _ = Course.objects.update_or_create(
            slug=SLUG, defaults={"title": TITLE, "description": DESCRIPTION}
        )
        User = get_user_model()
        for username, first, last, role in USERS:
            user, created = User.objects.get_or_create(
                username=username, defaults={"first_name": first, "last_name": last}
            )
            if created or not user.check_password(PASSWORD):
                user.set_password(PASSWORD)
                user.save()
            services.enroll(course=course, user=user, role=role)
            if role == Enrollment.Role.INSTRUCTOR:
                services.make_instructor_staff(user=user)
        return course

    @transaction.atomic
    def _skills(self, course: Course) -> None:
        entries = json.loads((DEMO_DIR / "skills.json").read_text())
        skills = {}
        for entry in entries:
            skill, _ = Skill.objects.update_or_create(
                course=course, name=entry["name"], defaults={"description": entry["description"]}
            )
            skills[skill.name] = skill
        for entry in entries:
            skills[entry["name"]].prerequisites.set(
                [skills[name] for name in entry.get("prerequisites", [])]
            )

    @transaction.atomic
    def _items(self, course: Course) -> int:
        """The approved check-question bank (knowledge/demo/items.json), refreshed by stem."""
        from learners.models import Item

        skills = {skill.name: skill for skill in course.skills.all()}
        entries = json.loads((DEMO_DIR / "items.json").read_text())
        for entry in entries:
            item, _ = Item.objects.update_or_create(
                course=course,
                skill=skills[entry["skill"]],
                stem=entry["stem"],
                defaults={
                    "kind": entry["kind"],
                    "choices": entry["choices"],
                    "answer": entry["answer"],
                    "irt_b": float(entry.get("difficulty", 0.0)),
                    "status": Item.Status.APPROVED,
                    "source": Item.Source.INSTRUCTOR,
                },
            )
            item.full_clean()
        return len(entries)
