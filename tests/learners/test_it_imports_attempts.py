"""Historical logs load into a course; a malformed row names its line and imports nothing."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from knowledge.models import Course, Enrollment, Skill
from learners import bkt
from learners.models import DEFAULT_PARAMS, Attempt, Mastery

DKT = "3\n7,7,9\n1,0,1\n2\n9,9\n0,1\n"


def _run(path: Path, fmt: str, course: str = "history-101", create: bool = True) -> dict:
    out = io.StringIO()
    call_command("import_attempts", str(path), course=course, format=fmt, create=create, stdout=out)
    return json.loads(out.getvalue())


def test_it_imports_a_dkt_file(db: None, tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    path.write_text(DKT)
    summary = _run(path, "dkt")
    assert summary["attempts_created"] == 5
    course = Course.objects.get(slug="history-101")
    assert sorted(Skill.objects.filter(course=course).values_list("name", flat=True)) == ["7", "9"]
    first = User.objects.get(username="import-0")
    assert course.role_of(first) == Enrollment.Role.LEARNER
    attempts = list(Attempt.objects.filter(learner=first).order_by("id"))
    assert [(a.skill.name, a.correct) for a in attempts] == [("7", True), ("7", False), ("9", True)]
    p = bkt.update(DEFAULT_PARAMS.p_l0, True, DEFAULT_PARAMS)
    p = bkt.update(p, False, DEFAULT_PARAMS)
    mastery = Mastery.objects.get(learner=first, skill__name="7")
    assert mastery.p_known == pytest.approx(p)
    assert mastery.attempts == 2
    # The same file again adds nothing.
    assert _run(path, "dkt")["attempts_created"] == 0
    assert Attempt.objects.count() == 5


def test_it_imports_a_csv_file_into_an_existing_course(course: Course, tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("student,skill,correct\nann,Seals,1\nbob,Seals,0\nann,Seals,1\n")
    summary = _run(path, "csv", course=course.slug, create=False)
    assert summary["attempts_created"] == 3
    assert Mastery.objects.get(learner__username="import-ann", skill__name="Seals").attempts == 2


def test_it_names_the_malformed_line_and_imports_nothing(db: None, tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("3\n7,7,9\n1,0,1\n2\n9,9\n0,2\n")
    with pytest.raises(CommandError, match="line 6"):
        _run(path, "dkt")
    assert not Course.objects.filter(slug="history-101").exists()
    assert not Attempt.objects.exists()
    assert not User.objects.filter(username__startswith="import-").exists()


def test_it_refuses_a_missing_course_without_create(db: None, tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    path.write_text(DKT)
    with pytest.raises(CommandError, match="--create"):
        _run(path, "dkt", create=False)
