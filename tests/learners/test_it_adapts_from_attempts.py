"""Fitting BKT from a course's attempts, calibrating items, and choosing the next item."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client

from knowledge.models import Course, Skill
from learners import bkt, services
from learners.models import Attempt, Item, PolicySnapshot, SkillParameters

TRUE = bkt.BKTParams(p_l0=0.3, p_t=0.15, p_g=0.2, p_s=0.1)


def _simulate(skill: Skill, learners: int, length: int, seed: int = 7) -> None:
    """Attempts drawn from BKT with TRUE parameters, written as the live system would."""
    rng = np.random.default_rng(seed)
    users = User.objects.bulk_create([User(username=f"sim-{seed}-{n}") for n in range(learners)])
    rows = []
    for user in users:
        known = rng.random() < TRUE.p_l0
        p = TRUE.p_l0
        for index in range(length):
            correct = bool(rng.random() < (1 - TRUE.p_s if known else TRUE.p_g))
            after = bkt.update(p, correct, TRUE)
            rows.append(
                Attempt(
                    learner=user,
                    skill=skill,
                    correct=correct,
                    source="import",
                    key=f"sim:{index}",
                    p_before=p,
                    p_after=after,
                )
            )
            p = after
            known = known or rng.random() < TRUE.p_t
    Attempt.objects.bulk_create(rows)


def test_it_fits_bkt_for_a_course_from_the_command(skill: Skill, course: Course) -> None:
    _simulate(skill, learners=400, length=20)
    out = io.StringIO()
    call_command("fit_bkt", course=course.slug, restarts=5, stdout=out, stderr=io.StringIO())
    summary = json.loads(out.getvalue())
    assert summary["skills_fitted"] == 1
    assert summary["attempts"] == 8000
    row = SkillParameters.objects.get(skill=skill)
    fitted, source = row.in_force()
    assert source == SkillParameters.Source.FITTED
    assert fitted.p_l0 == pytest.approx(TRUE.p_l0, abs=0.06)
    assert fitted.p_t == pytest.approx(TRUE.p_t, abs=0.04)
    assert fitted.p_g == pytest.approx(TRUE.p_g, abs=0.04)
    assert fitted.p_s == pytest.approx(TRUE.p_s, abs=0.04)
    # An instructor's values win over the fit.
    row.set_l0, row.set_t, row.set_g, row.set_s = 0.5, 0.1, 0.2, 0.1
    row.save()
    assert row.in_force()[1] == SkillParameters.Source.INSTRUCTOR


def test_it_refuses_an_unknown_course(db: None) -> None:
    with pytest.raises(CommandError, match="no course"):
        call_command("fit_bkt", course="nope")


def test_it_fits_from_the_admin_action(skill: Skill, course: Course, instructor: User) -> None:
    _simulate(skill, learners=60, length=10)
    client = Client()
    client.force_login(instructor)
    listing = client.get("/admin/learners/skillbkt/")
    assert listing.status_code == 200
    assert b"Defaults" in listing.content
    response = client.post(
        "/admin/learners/skillbkt/", {"action": "fit_now", "_selected_action": [skill.pk]}
    )
    assert response.status_code == 302
    assert SkillParameters.objects.get(skill=skill).fitted_at is not None
    assert b"Fitted from attempts" in client.get("/admin/learners/skillbkt/").content


def _items(course: Course, skill: Skill) -> list[Item]:
    return [
        Item.objects.create(
            course=course,
            skill=skill,
            stem=f"Question at difficulty {b}",
            choices=["yes", "no"],
            answer="yes",
            irt_b=b,
            status=Item.Status.APPROVED,
        )
        for b in (-2.0, -0.2, 1.0, 2.5)
    ]


def test_it_picks_the_most_informative_item_while_untrained(
    skill: Skill, course: Course, learner: User
) -> None:
    items = _items(course, skill)
    Item.objects.create(
        course=course, skill=skill, stem="draft", choices=["a", "b"], answer="a", irt_b=0.0
    )
    chosen = services.next_item(learner=learner, skill=skill)
    assert chosen == items[1]  # b = -0.2 is the most informative at ability 0; drafts never


def test_it_does_not_repeat_the_last_items(skill: Skill, course: Course, learner: User) -> None:
    items = _items(course, skill)
    asked = []
    for n in range(3):
        item = services.next_item(learner=learner, skill=skill)
        assert item is not None
        asked.append(item)
        services.record_attempt(
            learner=learner, skill=skill, item=item, correct=True, source="quiz", key=f"n{n}"
        )
    assert len(set(asked)) == 3
    assert set(asked) <= set(items)


def test_it_returns_none_without_approved_items(skill: Skill, learner: User) -> None:
    assert services.next_item(learner=learner, skill=skill) is None


def test_it_trains_and_uses_a_policy(skill: Skill, course: Course, learner: User) -> None:
    items = _items(course, skill)
    rng = np.random.default_rng(3)
    users = User.objects.bulk_create([User(username=f"p{n}") for n in range(40)])
    for user in users:
        for n in range(6):
            item = items[int(rng.integers(len(items)))]
            services.record_attempt(
                learner=user,
                skill=skill,
                item=item,
                correct=bool(rng.random() < 0.6),
                source="quiz",
                key=f"p{n}",
            )
    assert services.train_policy(course=course) == 240
    snapshot = PolicySnapshot.objects.get(course=course)
    assert snapshot.transitions == 240
    policy = services.current_policy(course)
    assert any(n > 0 for row in policy.visits for n in row)
    assert services.next_item(learner=learner, skill=skill) in items
    assert services.calibrate_items(course=course, min_responses=100) == 4
    assert all(item.calibrated_at for item in Item.objects.filter(course=course, status="approved"))
