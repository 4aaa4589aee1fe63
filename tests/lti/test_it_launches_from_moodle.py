"""A launch from the platform signs the user in, in the right course with the right role, and
opens the chat (learners) or the course's back office (instructors) inside the iframe."""

from __future__ import annotations

import json
import subprocess
import sys

import requests
from django.contrib.auth.models import User
from lti_tool.models import LtiUser

from knowledge import services as knowledge_services
from knowledge.models import Course, Enrollment, Skill
from lti.models import CourseLink, Identity, UsedNonce
from tests.conftest import ROOT
from tests.lti.conftest import Tool, launch_as, new_browser
from tests.lti.platform import PlatformServer
from tutoring.models import Conversation


def _framed_by(response: requests.Response, origin: str) -> bool:
    policy = response.headers.get("Content-Security-Policy", "")
    return (
        f"frame-ancestors 'self' {origin}" in policy and "X-Frame-Options" not in response.headers
    )


def test_an_instructor_lands_on_the_new_course_and_a_learner_on_its_chat(
    platform: PlatformServer, tool: Tool
) -> None:
    teacher = launch_as(platform, tool, "u-teacher")
    assert teacher.launch.status_code == 302, teacher.launch.text[:500]
    course = Course.objects.get(lti_links__context__id_on_platform="moodle-course-42")
    assert (course.slug, course.title) == ("pumps101", "Pump Maintenance")
    assert teacher.launch.headers["Location"] == f"/admin/knowledge/course/{course.pk}/change/"
    page = teacher.browser.get(tool.base + teacher.launch.headers["Location"])
    assert page.status_code == 200 and "Pump Maintenance" in page.text
    assert _framed_by(page, platform.url)
    tom = Identity.objects.get(issuer=platform.url, subject="u-teacher").user
    assert (tom.first_name, tom.email, tom.is_staff) == ("Tom", "u-teacher@example.edu", True)
    assert not tom.has_usable_password()
    assert course.role_of(tom) == Enrollment.Role.INSTRUCTOR
    assert LtiUser.objects.get(sub="u-teacher").auth_user == tom

    learner = launch_as(platform, tool, "u-learner")
    assert learner.launch.status_code == 302, learner.launch.text[:500]
    lena = Identity.objects.get(issuer=platform.url, subject="u-learner").user
    conversation = Conversation.objects.get(learner=lena)
    assert conversation.course == course and conversation.focus_skill is None
    assert learner.launch.headers["Location"] == f"/chat/{conversation.pk}/"
    chat = learner.browser.get(tool.base + learner.launch.headers["Location"])
    assert chat.status_code == 200 and "Pump Maintenance" in chat.text
    assert _framed_by(chat, platform.url)
    assert course.role_of(lena) == Enrollment.Role.LEARNER and not lena.is_staff

    # Relaunches reuse the user, the course, the enrollment and the conversation.
    counts = (User.objects.count(), Course.objects.count(), Enrollment.objects.count())
    again = launch_as(platform, tool, "u-learner")
    assert again.launch.headers["Location"] == f"/chat/{conversation.pk}/"
    assert launch_as(platform, tool, "u-teacher").launch.status_code == 302
    assert (User.objects.count(), Course.objects.count(), Enrollment.objects.count()) == counts
    assert Conversation.objects.filter(learner=lena).count() == 1
    assert UsedNonce.objects.count() == 4


def test_a_course_parameter_links_an_existing_course_and_skill_focuses_the_chat(
    platform: PlatformServer, tool: Tool
) -> None:
    course = knowledge_services.create_course(slug="pumps-101", title="Pumps 101")
    seals = Skill.objects.create(course=course, name="Seals")
    Skill.objects.create(course=course, name="Bearings")
    platform.state.custom = {"course": "pumps-101", "skill": "Seals"}
    assert launch_as(platform, tool, "u-teacher").launch.status_code == 302
    assert CourseLink.objects.get().course == course
    assert not Course.objects.filter(slug="pumps101").exists()

    first = launch_as(platform, tool, "u-learner")
    focused = Conversation.objects.get()
    assert focused.focus_skill == seals and focused.course == course
    assert first.launch.headers["Location"] == f"/chat/{focused.pk}/"
    # Another activity of the same course, on another skill: its own conversation ...
    platform.state.resource_link_id, platform.state.custom = "cmid-8", {"skill": "bearings"}
    other = launch_as(platform, tool, "u-learner", browser=first.browser)
    assert Conversation.objects.count() == 2
    assert Conversation.objects.get(pk=int(other.launch.headers["Location"].split("/")[2]))
    # ... and back to the first, the first conversation.
    platform.state.resource_link_id, platform.state.custom = "cmid-7", {"skill": "Seals"}
    back = launch_as(platform, tool, "u-learner", browser=first.browser)
    assert back.launch.headers["Location"] == f"/chat/{focused.pk}/"


def test_an_unknown_skill_opens_the_whole_course_with_a_note(
    platform: PlatformServer, tool: Tool
) -> None:
    assert launch_as(platform, tool, "u-teacher").launch.status_code == 302
    platform.state.custom = {"skill": "Telepathy"}
    walk = launch_as(platform, tool, "u-learner")
    assert walk.launch.status_code == 302
    assert Conversation.objects.get().focus_skill is None
    chat = walk.browser.get(tool.base + walk.launch.headers["Location"])
    assert "Telepathy" in chat.text


def test_a_learner_before_any_instructor_is_refused_and_nothing_is_kept(
    platform: PlatformServer, tool: Tool
) -> None:
    users, courses = User.objects.count(), Course.objects.count()
    walk = launch_as(platform, tool, "u-learner")
    assert walk.launch.status_code == 403
    assert "instructor has to open it from Moodle once" in walk.launch.text
    assert User.objects.count() == users
    assert not Identity.objects.exists() and not LtiUser.objects.exists()
    assert not UsedNonce.objects.exists() and Course.objects.count() == courses


def test_a_role_without_a_place_in_the_course_is_refused(
    platform: PlatformServer, tool: Tool
) -> None:
    assert launch_as(platform, tool, "u-teacher").launch.status_code == 302
    platform.add_user("u-parent", "Pat Parent", ["Mentor"])
    walk = launch_as(platform, tool, "u-parent")
    assert walk.launch.status_code == 403 and "role" in walk.launch.text
    assert not Identity.objects.filter(subject="u-parent").exists()


def test_a_teaching_assistant_teaches(platform: PlatformServer, tool: Tool) -> None:
    assert launch_as(platform, tool, "u-teacher").launch.status_code == 302
    platform.add_user("u-ta", "Tia Assistant", ["Instructor#TeachingAssistant"])
    platform.state.users["u-ta"].roles = [
        "http://purl.imsglobal.org/vocab/lis/v2/membership/Instructor#TeachingAssistant"
    ]
    walk = launch_as(platform, tool, "u-ta")
    assert walk.launch.headers["Location"].startswith("/admin/knowledge/course/")
    tia = Identity.objects.get(subject="u-ta").user
    assert Course.objects.get(lti_links__isnull=False).is_taught_by(tia)


def test_a_learner_never_reaches_instructor_pages(platform: PlatformServer, tool: Tool) -> None:
    assert launch_as(platform, tool, "u-teacher").launch.status_code == 302
    course = Course.objects.get(lti_links__isnull=False)
    walk = launch_as(platform, tool, "u-learner")
    browser = walk.browser
    admin = browser.get(
        f"{tool.base}/admin/knowledge/course/{course.pk}/change/", allow_redirects=False
    )
    assert admin.status_code == 302 and "/admin/login/" in admin.headers["Location"]
    api = browser.get(f"{tool.base}/api/courses/{course.slug}/mastery/")
    assert api.status_code == 403
    picker = browser.post(
        f"{tool.base}/lti/deep-link/",
        data={"launch": "anything", "csrfmiddlewaretoken": browser.cookies.get("csrftoken", "")},
        headers={"Referer": tool.base + "/", "Origin": tool.base},
    )
    assert picker.status_code == 403


def test_the_cookie_check_page_offers_a_new_window(platform: PlatformServer, tool: Tool) -> None:
    params = platform.login_initiation_params("u-learner")
    page = requests.post(tool.login_url, data=params)
    assert page.status_code == 200
    assert "new tab or window" in page.text and "lti1p3_new_window" in page.text
    assert _framed_by(page, platform.url)


def test_an_unknown_registration_is_refused_at_login(platform: PlatformServer, tool: Tool) -> None:
    params = platform.login_initiation_params("u-learner") | {"lti1p3_new_window": "1"}
    other = f"{tool.base}/lti/init/00000000-0000-4000-8000-000000000000/"
    page = requests.post(other, data=params, allow_redirects=False)
    assert page.status_code == 403 and "registration" in page.text


def test_other_pages_may_not_be_framed(platform: PlatformServer, tool: Tool) -> None:
    login = requests.get(tool.base + "/login/")
    assert login.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors" not in login.headers.get("Content-Security-Policy", "")
    # A tutoring page outside an LTI session, e.g. from the site's own login, is not framed.
    course = knowledge_services.create_course(slug="web-only", title="Web only")
    user = User.objects.create_user("wendy", password="pw-wendy-123")
    knowledge_services.enroll(course=course, user=user, role=Enrollment.Role.LEARNER)
    browser = new_browser()
    form = browser.get(tool.base + "/login/")
    token = browser.cookies["csrftoken"]
    assert form.status_code == 200
    signed_in = browser.post(
        tool.base + "/login/",
        data={"username": "wendy", "password": "pw-wendy-123", "csrfmiddlewaretoken": token},
        headers={"Referer": tool.base + "/login/"},
    )
    assert signed_in.status_code == 200
    page = browser.get(tool.base + "/courses/web-only/")
    assert page.status_code == 200 and page.headers["X-Frame-Options"] == "DENY"


def test_the_secure_cookie_switch_makes_cookies_cross_site(process_env: dict[str, str]) -> None:
    script = (
        "import django, json; django.setup(); from django.conf import settings as s; "
        "print(json.dumps([s.SESSION_COOKIE_SECURE, s.SESSION_COOKIE_SAMESITE, "
        "s.CSRF_COOKIE_SECURE, s.CSRF_COOKIE_SAMESITE, s.SECURE_PROXY_SSL_HEADER]))"
    )
    env = {**process_env, "TUTOR_SECURE_COOKIES": "true", "TUTOR_BEHIND_TLS_PROXY": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [
        True,
        "None",
        True,
        "None",
        ["HTTP_X_FORWARDED_PROTO", "https"],
    ]


def test_the_state_cookie_is_cross_site_over_https(platform: PlatformServer, tool: Tool) -> None:
    from django.test import Client

    params = platform.login_initiation_params("u-learner") | {"lti1p3_new_window": "1"}
    response = Client().post(f"/lti/init/{tool.registration.uuid}/", params, secure=True)
    assert response.status_code == 302
    state_cookies = [c for name, c in response.cookies.items() if name.startswith("lti1p3-state")]
    assert state_cookies and all(
        c["samesite"] == "None" and c["secure"] and c["httponly"] for c in state_cookies
    )
