"""A learner's mastery reaches the platform's gradebook (AGS) through the queue: once per value,
again after a failure, per course or per skill."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User

from knowledge.models import Course, Skill
from learners.models import Attempt
from learners.services import mastery_of, record_attempt
from lti import services, tasks
from lti.models import Grading, Identity, ScoreSync
from tests.lti.conftest import Tool, launch_as
from tests.lti.platform import PlatformServer

pytestmark = pytest.mark.usefixtures("run_tasks_now")


def _set_up(platform: PlatformServer, tool: Tool) -> tuple[Course, list[Skill], User]:
    assert launch_as(platform, tool, "u-teacher").launch.status_code == 302
    course = Course.objects.get(lti_links__isnull=False)
    skills = [Skill.objects.create(course=course, name=name) for name in ("Seals", "Bearings")]
    assert launch_as(platform, tool, "u-learner").launch.status_code == 302
    learner = Identity.objects.get(subject="u-learner").user
    return course, skills, learner


def _answer(learner: User, skill: Skill, key: str, correct: bool = True) -> None:
    record_attempt(
        learner=learner, skill=skill, correct=correct, source=Attempt.Source.LTI, key=key
    )


def test_an_attempt_posts_the_course_mastery_once(platform: PlatformServer, tool: Tool) -> None:
    course, skills, lena = _set_up(platform, tool)
    row = ScoreSync.objects.get(user=lena)
    assert row.subject == "u-learner" and row.column.url.endswith(
        "/lineitems/cmid-7/lineitem?type_id=1"
    )

    _answer(lena, skills[0], "a1")
    [score] = platform.state.scores
    expected = round(services.course_mastery(learner=lena, course=course) * 100, 2)  # type: ignore[operator]
    assert score["line_item"] == "cmid-7" and score["userId"] == "u-learner"
    assert score["scoreGiven"] == expected and score["scoreMaximum"] == 100
    assert score["gradingProgress"] == "FullyGraded"
    assert platform.state.hits["/lineitems/cmid-7/lineitem/scores"] == 1

    # The same value is never posted twice: not by a repeated task, not by a repeated key.
    assert tasks.post_scores(lena.pk, course.pk) == {"unchanged": 1}
    _answer(lena, skills[0], "a1")
    assert len(platform.state.scores) == 1
    # A new value is.
    _answer(lena, skills[1], "a2", correct=False)
    assert len(platform.state.scores) == 2
    assert platform.state.scores[-1]["scoreGiven"] == round(
        services.course_mastery(learner=lena, course=course) * 100,  # type: ignore[operator]
        2,
    )
    assert ScoreSync.objects.get(user=lena).posted_score == platform.state.scores[-1]["scoreGiven"]


def test_a_refused_post_is_retried_until_it_lands(platform: PlatformServer, tool: Tool) -> None:
    _course, skills, lena = _set_up(platform, tool)
    platform.state.fail_scores = 2
    _answer(lena, skills[0], "b1")
    row = ScoreSync.objects.get(user=lena)
    assert platform.state.scores == [] and row.posted_score is None
    assert row.failures == 1 and row.retry_at is not None and "500" in row.last_error

    assert services.retry_due_scores() == 0  # not due yet
    assert tasks.retry_scores() == 0
    assert services.retry_due_scores(now=row.retry_at + timedelta(seconds=1)) == 1
    row.refresh_from_db()
    assert row.failures == 2 and platform.state.scores == []
    assert services.retry_due_scores(now=row.retry_at + timedelta(seconds=1)) == 1
    row.refresh_from_db()
    [score] = platform.state.scores
    assert (row.failures, row.retry_at, row.last_error) == (0, None, "")
    assert row.posted_score == score["scoreGiven"]
    assert row.posted_at is not None
    assert services.retry_due_scores(now=row.posted_at + timedelta(days=1)) == 0


def test_per_skill_grading_posts_each_activity_its_skill(
    platform: PlatformServer, tool: Tool
) -> None:
    course, (seals, bearings), lena = _set_up(platform, tool)
    Grading.objects.create(course=course, mode=Grading.Mode.SKILL)
    platform.state.resource_link_id, platform.state.custom = "cmid-9", {"skill": "Bearings"}
    assert launch_as(platform, tool, "u-learner").launch.status_code == 302

    _answer(lena, seals, "c1")
    by_column = {score["line_item"]: score["scoreGiven"] for score in platform.state.scores}
    course_mean = services.course_mastery(learner=lena, course=course)
    assert by_column == {
        "cmid-7": round(course_mean * 100, 2),  # type: ignore[operator]
        "cmid-9": round(mastery_of(lena, bearings) * 100, 2),
    }
    _answer(lena, seals, "c2")
    # The Bearings activity has not changed, so it is not posted again.
    assert [s["line_item"] for s in platform.state.scores] == ["cmid-7", "cmid-9", "cmid-7"]


def test_a_blocked_token_endpoint_is_reported_clearly(platform: PlatformServer, tool: Tool) -> None:
    _course, skills, lena = _set_up(platform, tool)
    platform.state.token_html = True
    _answer(lena, skills[0], "d1")
    row = ScoreSync.objects.get(user=lena)
    assert row.failures == 1 and "web page instead of JSON" in row.last_error
    assert "cURL blocked hosts list" in row.last_error


def test_instructors_and_learners_without_a_column_queue_nothing(
    platform: PlatformServer, tool: Tool
) -> None:
    platform.state.with_ags = False
    course, skills, lena = _set_up(platform, tool)
    assert not ScoreSync.objects.exists()
    _answer(lena, skills[0], "e1")
    assert platform.state.scores == [] and "/token" not in platform.state.hits
    assert course.has_member(lena)
