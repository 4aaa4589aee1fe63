"""Attempts, mastery and items over the API, with its permission matrix and bad input."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from knowledge import services as knowledge_services
from knowledge.models import Course, Enrollment, Skill
from learners.models import Attempt, Item

Client = Callable[[User | None], APIClient]


@pytest.fixture
def other_learner(course: Course) -> User:
    user = User.objects.create_user("lia-learner", password="x")
    knowledge_services.enroll(course=course, user=user, role=Enrollment.Role.LEARNER)
    return user


def _attempt(client: APIClient, skill: Skill, key: str = "a1", **extra: object):
    return client.post(
        "/api/attempts/",
        {"skill": skill.pk, "correct": True, "key": key, **extra},
        format="json",
    )


def test_it_records_an_attempt_idempotently(
    skill: Skill, learner: User, client_for: Client
) -> None:
    client = client_for(learner)
    first = _attempt(client, skill)
    assert first.status_code == 201
    body = first.json()
    assert body["duplicate"] is False
    assert body["mode"] in ("foundational", "scaffolded", "advanced")
    again = _attempt(client, skill)
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert again.json()["p_known"] == body["p_known"]
    assert Attempt.objects.filter(learner=learner).count() == 1


def test_it_names_the_field_of_bad_input(skill: Skill, learner: User, client_for: Client) -> None:
    client = client_for(learner)
    unknown_skill = client.post(
        "/api/attempts/", {"skill": 999999, "correct": True, "key": "x"}, format="json"
    )
    assert unknown_skill.status_code == 400
    assert unknown_skill.json()["field"] == "skill"
    unknown_item = _attempt(client, skill, item=424242)
    assert unknown_item.status_code == 400
    assert unknown_item.json()["field"] == "item"
    missing = client.post("/api/attempts/", {"skill": skill.pk, "key": "x"}, format="json")
    assert missing.status_code == 400
    assert missing.json()["field"] == "correct"
    bad_source = _attempt(client, skill, source="telepathy")
    assert bad_source.status_code == 400
    assert bad_source.json()["field"] == "source"
    assert not Attempt.objects.exists()


def test_it_refuses_attempts_outside_the_learners_courses(
    skill: Skill, outsider: User, client_for: Client
) -> None:
    response = _attempt(client_for(outsider), skill)
    assert response.status_code == 403
    assert not Attempt.objects.exists()


def test_it_refuses_anonymous_attempts(skill: Skill, client_for: Client) -> None:
    assert _attempt(client_for(None), skill).status_code in (401, 403)


def test_it_shows_learners_their_own_mastery_only(
    skill: Skill, learner: User, other_learner: User, client_for: Client
) -> None:
    _attempt(client_for(learner), skill)
    mine = client_for(learner).get("/api/learners/me/mastery/").json()
    seals = next(row for row in mine if row["skill_name"] == "Seals")
    assert seals["attempts"] == 1
    basics = next(row for row in mine if row["skill_name"] == "Pump basics")
    assert basics["attempts"] == 0  # never answered: shown at the prior
    theirs = client_for(other_learner).get("/api/learners/me/mastery/").json()
    assert all(row["attempts"] == 0 for row in theirs)


def test_it_shows_course_mastery_to_its_instructors_only(
    skill: Skill,
    learner: User,
    other_learner: User,
    instructor: User,
    outsider: User,
    client_for: Client,
) -> None:
    _attempt(client_for(learner), skill)
    url = f"/api/courses/{skill.course.slug}/mastery/"
    rows = client_for(instructor).get(url).json()
    assert {row["username"] for row in rows} == {learner.username, other_learner.username}
    answered = [row for row in rows if row["attempts"]]
    assert [(row["username"], row["skill_name"]) for row in answered] == [
        (learner.username, "Seals")
    ]
    for user in (learner, other_learner, outsider):
        assert client_for(user).get(url).status_code == 403
    assert client_for(None).get(url).status_code in (401, 403)


def test_it_lets_instructors_manage_items(
    skill: Skill, instructor: User, learner: User, outsider: User, client_for: Client
) -> None:
    client = client_for(instructor)
    url = f"/api/courses/{skill.course.slug}/items/"
    created = client.post(
        url,
        {
            "skill": skill.pk,
            "stem": "What presses the seal faces together?",
            "choices": ["A spring", "The impeller", "Gravity"],
            "answer": "A spring",
            "kind": "mc",
            "irt_b": 0.5,
        },
        format="json",
    )
    assert created.status_code == 201, created.json()
    item_id = created.json()["id"]
    assert client.get(url).json()[0]["stem"].startswith("What presses")
    patched = client.patch(f"/api/items/{item_id}/", {"status": "approved"}, format="json")
    assert patched.status_code == 200
    assert Item.objects.get(pk=item_id).status == "approved"
    wrong = client.patch(f"/api/items/{item_id}/", {"answer": "A magnet"}, format="json")
    assert wrong.status_code == 400
    assert wrong.json()["field"] == "answer"
    for user in (learner, outsider):
        assert client_for(user).get(url).status_code == 403
        assert client_for(user).get(f"/api/items/{item_id}/").status_code == 403
        assert client_for(user).delete(f"/api/items/{item_id}/").status_code == 403
    assert client.delete(f"/api/items/{item_id}/").status_code == 204
    assert not Item.objects.filter(pk=item_id).exists()


def test_it_refuses_an_item_for_another_courses_skill(
    skill: Skill, instructor: User, client_for: Client
) -> None:
    other = knowledge_services.create_course(slug="elsewhere", title="Elsewhere")
    foreign = Skill.objects.create(course=other, name="Foreign")
    response = client_for(instructor).post(
        f"/api/courses/{skill.course.slug}/items/",
        {"skill": foreign.pk, "stem": "?", "choices": ["a", "b"], "answer": "a"},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["field"] == "skill"
