"""Every graded response updates mastery by BKT, once, atomically."""

from __future__ import annotations

import itertools
import threading

import pytest
from django.contrib.auth.models import User
from django.db import connection

from knowledge.models import Course, Skill
from learners import bkt, services
from learners.models import DEFAULT_PARAMS, Attempt, Mastery, Mode, SkillParameters
from learners.signals import mastery_changed


def test_it_applies_the_bkt_update(skill: Skill, learner: User) -> None:
    result = services.record_attempt(
        learner=learner, skill=skill, correct=True, source="quiz", key="q1"
    )
    expected = bkt.update(DEFAULT_PARAMS.p_l0, True, DEFAULT_PARAMS)
    assert result.created
    assert result.p_known == pytest.approx(expected)
    assert result.attempts == 1
    mastery = Mastery.objects.get(learner=learner, skill=skill)
    assert mastery.p_known == pytest.approx(expected)
    assert result.attempt.p_before == pytest.approx(DEFAULT_PARAMS.p_l0)


def test_it_uses_the_parameters_in_force(skill: Skill, learner: User) -> None:
    SkillParameters.objects.create(
        skill=skill, set_l0=0.5, set_t=0.0, set_g=0.25, set_s=0.25, set_f=0.0
    )
    result = services.record_attempt(
        learner=learner, skill=skill, correct=False, source="quiz", key="q1"
    )
    # 0.5 * 0.25 / (0.5 * 0.25 + 0.5 * 0.75) = 0.25, no learning.
    assert result.p_known == pytest.approx(0.25)


def test_it_returns_the_first_result_for_a_repeated_key(skill: Skill, learner: User) -> None:
    first = services.record_attempt(
        learner=learner, skill=skill, correct=True, source="api", key="k"
    )
    again = services.record_attempt(
        learner=learner, skill=skill, correct=False, source="api", key="k"
    )
    assert not again.created
    assert again.attempt.pk == first.attempt.pk
    assert again.p_known == first.p_known
    assert Attempt.objects.filter(learner=learner).count() == 1
    assert Mastery.objects.get(learner=learner, skill=skill).attempts == 1


def test_it_refuses_a_key_reused_for_another_skill(
    skill: Skill, learner: User, course: Course
) -> None:
    other = Skill.objects.get(course=course, name="Pump basics")
    services.record_attempt(learner=learner, skill=skill, correct=True, source="api", key="k")
    with pytest.raises(services.LearnerError, match="another skill"):
        services.record_attempt(learner=learner, skill=other, correct=True, source="api", key="k")


def test_it_keeps_attempts_append_only(skill: Skill, learner: User) -> None:
    result = services.record_attempt(
        learner=learner, skill=skill, correct=True, source="api", key="k"
    )
    result.attempt.correct = False
    with pytest.raises(ValueError, match="append-only"):
        result.attempt.save()


def test_it_pitches_the_mode_by_the_course_thresholds(
    skill: Skill, learner: User, course: Course
) -> None:
    modes = [
        services.record_attempt(
            learner=learner, skill=skill, correct=i > 0, source="quiz", key=f"q{i}"
        ).mode
        for i in range(8)
    ]
    assert modes[0] == Mode.FOUNDATIONAL
    assert Mode.SCAFFOLDED in modes
    assert modes[-1] == Mode.ADVANCED
    mastery = Mastery.objects.get(learner=learner, skill=skill)
    course.advanced_from = 1.0
    course.save()
    mastery.refresh_from_db()
    mastery.skill.course.refresh_from_db()
    assert mastery.mode() == Mode.SCAFFOLDED


def test_it_lists_unmet_prerequisites(skill: Skill, learner: User, course: Course) -> None:
    basics = Skill.objects.get(course=course, name="Pump basics")
    assert skill.prerequisites_unmet(learner) == [basics]
    for i in range(10):
        services.record_attempt(
            learner=learner, skill=basics, correct=True, source="quiz", key=f"b{i}"
        )
    assert Mastery.objects.get(learner=learner, skill=basics).p_known >= course.advanced_from
    assert skill.prerequisites_unmet(learner) == []


def test_it_announces_the_change_on_commit(
    skill: Skill, learner: User, django_capture_on_commit_callbacks
) -> None:
    heard: list[dict[str, object]] = []

    def listener(**kwargs: object) -> None:
        heard.append(kwargs)

    mastery_changed.connect(listener)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            result = services.record_attempt(
                learner=learner, skill=skill, correct=True, source="quiz", key="s1"
            )
        assert len(heard) == 1
        assert heard[0]["skill_id"] == skill.pk
        assert heard[0]["p_known"] == result.p_known
    finally:
        mastery_changed.disconnect(listener)


@pytest.mark.django_db(transaction=True)
def test_it_serialises_concurrent_attempts(skill: Skill, learner: User) -> None:
    """Eight threads, each with its own database connection, answer at once; none is lost."""
    per_thread, threads = 6, 8
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def answer(thread: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                services.record_attempt(
                    learner=learner,
                    skill=skill,
                    correct=(thread + i) % 3 != 0,
                    source="api",
                    # Every thread also repeats one shared key: it must count once.
                    key=f"t{thread}-{i}" if i else "shared",
                )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=answer, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not errors, errors
    expected = threads * (per_thread - 1) + 1
    attempts = list(Attempt.objects.filter(learner=learner, skill=skill).order_by("id"))
    assert len(attempts) == expected
    mastery = Mastery.objects.get(learner=learner, skill=skill)
    assert mastery.attempts == expected
    # Serialised: each attempt started from the previous one's result.
    for before, after in itertools.pairwise(attempts):
        assert after.p_before == pytest.approx(before.p_after)
    assert mastery.p_known == pytest.approx(attempts[-1].p_after)


def test_it_lets_a_wrong_answer_count_after_a_long_run_of_right_ones(
    skill: Skill, learner: User
) -> None:
    for i in range(80):
        services.record_attempt(
            learner=learner, skill=skill, correct=True, source="quiz", key=f"r{i}"
        )
    high = Mastery.objects.get(learner=learner, skill=skill)
    assert high.p_known == 1.0  # as a float; the belief itself is kept as log-odds
    services.record_attempt(learner=learner, skill=skill, correct=False, source="quiz", key="w")
    lower = Mastery.objects.get(learner=learner, skill=skill)
    assert lower.log_odds < high.log_odds


def test_it_refuses_invalid_instructor_parameters(skill: Skill) -> None:
    from django.core.exceptions import ValidationError

    row = SkillParameters(skill=skill, set_l0=0.3, set_t=0.1, set_g=0.6, set_s=0.5)
    with pytest.raises(ValidationError, match="guess"):
        row.full_clean()
    partial = SkillParameters(skill=skill, set_l0=0.3)
    with pytest.raises(ValidationError, match="all of"):
        partial.full_clean()
