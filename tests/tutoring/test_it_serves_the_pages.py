"""The learner's pages: the course (mastery per skill, past conversations) and the chat."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from knowledge.models import Course, Skill
from learners.models import Attempt
from learners.services import record_attempt
from tutoring.models import Conversation

pytestmark = pytest.mark.django_db


def _client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def skills(course: Course) -> list[Skill]:
    basics = Skill.objects.create(course=course, name="Pump Basics", description="What pumps do.")
    priming = Skill.objects.create(course=course, name="Pump Priming", description="Priming.")
    priming.prerequisites.add(basics)
    return [basics, priming]


def test_the_course_page_shows_mastery_per_skill_and_past_conversations(
    course: Course, learner: User, skills: list[Skill]
) -> None:
    for n in range(3):
        record_attempt(
            learner=learner, skill=skills[1], correct=True, source=Attempt.Source.QUIZ, key=f"k{n}"
        )
    Conversation.objects.create(learner=learner, course=course, title="How do I prime a pump?")
    page = _client(learner).get(f"/courses/{course.slug}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Pump Basics" in html and "Pump Priming" in html
    rows = {row["name"]: row for row in page.context["skills"]}
    assert rows["Pump Priming"]["attempts"] == 3
    assert rows["Pump Priming"]["p_known"] > rows["Pump Basics"]["p_known"]
    assert rows["Pump Priming"]["prerequisites"] == ["Pump Basics"]
    assert f'value="{rows["Pump Priming"]["p_known"]}"' in html  # the meter
    assert "How do I prime a pump?" in html
    home = _client(learner).get("/")
    assert f"/courses/{course.slug}/" in home.content.decode()


def test_a_new_conversation_opens_the_chat_page(
    course: Course, learner: User, skills: list[Skill]
) -> None:
    client = _client(learner)
    response = client.post(f"/courses/{course.slug}/conversations/", {"skill": skills[1].pk})
    conversation = Conversation.objects.get()
    assert conversation.focus_skill == skills[1]
    assert response.status_code == 302 and response["Location"] == f"/chat/{conversation.pk}/"
    page = client.get(response["Location"])
    assert page.status_code == 200
    html = page.content.decode()
    assert f'"socketPath": "/ws/chat/{conversation.pk}/"' in html
    assert "tutoring/chat.js" in html and "tutoring/markdown.js" in html
    assert 'id="stop"' in html and "Pump Priming" in html
    for asset in ("tutoring/chat.js", "tutoring/markdown.js", "tutoring/chat.css"):
        assert "//" not in asset  # served from here, no CDN


def test_strangers_and_bad_input_are_refused(
    course: Course, learner: User, outsider: User, skills: list[Skill]
) -> None:
    mine = Conversation.objects.create(learner=learner, course=course)
    stranger = _client(outsider)
    assert stranger.get(f"/courses/{course.slug}/").status_code == 403
    assert stranger.post(f"/courses/{course.slug}/conversations/").status_code == 403
    assert stranger.get(f"/chat/{mine.pk}/").status_code == 404
    assert _client(learner).get("/courses/nowhere/").status_code == 404
    anonymous = Client().get(f"/chat/{mine.pk}/")
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]
    response = _client(learner).post(
        f"/courses/{course.slug}/conversations/", {"skill": "999999"}, follow=True
    )
    assert "not part of this course" in response.content.decode()
    assert Conversation.objects.count() == 1
