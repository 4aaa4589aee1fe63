"""Deep linking: an instructor picks a skill and it goes back to the platform as an activity,
which then opens the chat on that skill."""

from __future__ import annotations

import jwt
import requests

from knowledge.models import Course, Skill
from tests.lti.conftest import Tool, launch_as, parse_form
from tests.lti.platform import PlatformServer
from tutoring.models import Conversation


def test_an_instructor_adds_a_skill_as_an_activity(platform: PlatformServer, tool: Tool) -> None:
    assert launch_as(platform, tool, "u-teacher").launch.status_code == 302
    course = Course.objects.get(lti_links__isnull=False)
    seals = Skill.objects.create(course=course, name="Seals")
    Skill.objects.create(course=course, name="Bearings")

    platform.state.deep_linking = True
    walk = launch_as(platform, tool, "u-teacher")
    assert walk.launch.status_code == 200, walk.launch.text[:500]
    assert "Seals" in walk.launch.text and "Bearings" in walk.launch.text
    assert platform.url in walk.launch.headers["Content-Security-Policy"]
    picker = parse_form(walk.launch.text, "/lti/deep-link/")
    answer = walk.browser.post(
        tool.base + str(picker.action), data={**picker.fields, "skill": str(seals.pk)}
    )
    assert answer.status_code == 200, answer.text[:500]
    back = parse_form(answer.text)
    assert back.action == platform.url + "/deep_link_return"
    claims = jwt.decode(back.fields["JWT"], options={"verify_signature": False})
    assert claims["iss"] == platform.state.client_id and claims["aud"] == [platform.url]

    accepted = requests.post(str(back.action), data=back.fields)
    assert accepted.status_code == 200, accepted.text
    [item] = accepted.json()["accepted"]
    assert item["type"] == "ltiResourceLink" and item["url"] == tool.launch_url
    assert item["custom"] == {"skill": "Seals"} and item["title"] == "Tutor: Seals"
    assert item["lineItem"]["scoreMaximum"] == 100

    # Moodle makes the activity; a learner opening it chats about Seals.
    platform.state.deep_linking = False
    platform.state.resource_link_id, platform.state.custom = "cmid-11", item["custom"]
    learner = launch_as(platform, tool, "u-learner")
    assert learner.launch.status_code == 302
    assert Conversation.objects.get().focus_skill == seals


def test_a_picked_launch_can_not_be_used_by_someone_else(
    platform: PlatformServer, tool: Tool
) -> None:
    assert launch_as(platform, tool, "u-teacher").launch.status_code == 302
    platform.state.deep_linking = True
    teacher = launch_as(platform, tool, "u-teacher")
    picker = parse_form(teacher.launch.text, "/lti/deep-link/")
    platform.add_user("u-teacher-2", "Ted Other", ["Instructor"])
    platform.state.deep_linking = False
    other = launch_as(platform, tool, "u-teacher-2")
    assert other.launch.status_code == 302
    other.browser.get(tool.base + other.launch.headers["Location"])  # a page with a form
    token = other.browser.cookies.get("csrftoken", "")
    stolen = other.browser.post(
        tool.base + str(picker.action),
        data={"launch": picker.fields["launch"], "skill": "", "csrfmiddlewaretoken": token},
    )
    assert stolen.status_code == 403 and "someone else" in stolen.text
