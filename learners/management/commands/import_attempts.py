"""Load historical answer logs into a course: skills and learners are created as needed."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from knowledge import services as knowledge_services
from knowledge.models import Course, Enrollment, Skill
from learners import bkt
from learners.kt_data import FORMATS, DataFormatError, read_responses
from learners.models import Attempt, Mastery, params_for

BATCH = 5000


class Command(BaseCommand):
    help = (
        "Import graded answers (DKT or CSV format) into a course. The whole file is checked "
        "first: a malformed row names its line and nothing is imported. Importing the same file "
        "again adds nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path")
        parser.add_argument("--course", required=True, help="course slug")
        parser.add_argument("--format", required=True, choices=FORMATS)
        parser.add_argument("--create", action="store_true", help="create the course if missing")
        parser.add_argument(
            "--user-prefix", default="import-", help="prefix of the learners' usernames"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["path"])
        if not path.is_file():
            raise CommandError(f"{path}: no such file")
        started = time.perf_counter()
        try:
            responses = read_responses(path, options["format"])
        except DataFormatError as exc:
            raise CommandError(f"{exc}; nothing was imported") from exc
        course = Course.objects.filter(slug=options["course"]).first()
        if course is None:
            if not options["create"]:
                raise CommandError(f"no course {options['course']!r}; add --create to make it")
            course = knowledge_services.create_course(
                slug=options["course"], title=options["course"].replace("-", " ").title()
            )
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        with transaction.atomic():
            created = self._import(course, responses, options["user_prefix"], digest)
        summary = {
            "course": course.slug,
            "responses": len(responses),
            "students": responses.n_students,
            "skills": len(set(responses.skill)),
            "attempts_created": created,
            "seconds": round(time.perf_counter() - started, 2),
        }
        self.stdout.write(json.dumps(summary))

    def _import(self, course: Course, responses: Any, prefix: str, digest: str) -> int:
        skills = {skill.name: skill for skill in Skill.objects.filter(course=course)}
        missing = sorted(set(responses.skill) - set(skills), key=_natural)
        Skill.objects.bulk_create(
            [Skill(course=course, name=name[:120]) for name in missing], ignore_conflicts=True
        )
        skills = {skill.name: skill for skill in Skill.objects.filter(course=course)}
        usernames = {student: f"{prefix}{student}"[:150] for student in set(responses.student)}
        User.objects.bulk_create(
            [User(username=name, password="!") for name in usernames.values()],
            ignore_conflicts=True,
        )
        users = {
            user.username: user for user in User.objects.filter(username__in=usernames.values())
        }
        Enrollment.objects.bulk_create(
            [
                Enrollment(course=course, user=user, role=Enrollment.Role.LEARNER)
                for user in users.values()
            ],
            ignore_conflicts=True,
        )
        params = {name: params_for(skill)[0] for name, skill in skills.items()}
        # Per (learner, skill): log-odds of mastery, attempts, correct answers.
        state: dict[tuple[int, int], list[float]] = {
            (row.learner_id, row.skill_id): [row.log_odds, row.attempts, row.correct]
            for row in Mastery.objects.filter(skill__course=course, learner__in=users.values())
        }
        index = responses.index()
        existing = set(
            Attempt.objects.filter(
                skill__course=course, key__startswith=f"import:{digest}:"
            ).values_list("learner_id", "key")
        )
        rows: list[Attempt] = []
        created = 0
        for i, (student, skill_name, correct) in enumerate(
            zip(responses.student, responses.skill, responses.correct.tolist(), strict=True)
        ):
            user = users[usernames[student]]
            skill = skills[skill_name[:120]]
            key = f"import:{digest}:{student}:{index[i]}"
            if (user.pk, key) in existing:
                continue
            pair = (user.pk, skill.pk)
            skill_params = params[skill_name[:120]]
            current = state.setdefault(pair, [bkt.to_logit(skill_params.p_l0), 0, 0])
            after = bkt.update_logit(current[0], bool(correct), skill_params)
            rows.append(
                Attempt(
                    learner=user,
                    skill=skill,
                    correct=bool(correct),
                    source=Attempt.Source.IMPORT,
                    key=key,
                    p_before=bkt.from_logit(current[0]),
                    p_after=bkt.from_logit(after),
                )
            )
            current[0], current[1], current[2] = after, current[1] + 1, current[2] + int(correct)
            if len(rows) >= BATCH:
                Attempt.objects.bulk_create(rows)
                created += len(rows)
                rows = []
        Attempt.objects.bulk_create(rows)
        created += len(rows)
        Mastery.objects.bulk_create(
            [
                Mastery(
                    learner_id=learner_id,
                    skill_id=skill_id,
                    p_known=bkt.from_logit(values[0]),
                    log_odds=values[0],
                    attempts=int(values[1]),
                    correct=int(values[2]),
                )
                for (learner_id, skill_id), values in state.items()
            ],
            update_conflicts=True,
            unique_fields=["learner", "skill"],
            update_fields=["p_known", "log_odds", "attempts", "correct", "updated_at"],
        )
        return created


def _natural(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (1 << 62, name)
