"""Names and Role Provisioning: the platform's roster becomes the course's enrollments; a member
removed in the platform loses access here."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client

from knowledge import services as knowledge_services
from knowledge.models import Course, Enrollment
from lti.models import CourseLink, Identity
from tests.lti.conftest import Tool, launch_as
from tests.lti.platform import PlatformServer


def test_a_sync_adds_and_removes_members(platform: PlatformServer, tool: Tool) -> None:
    assert launch_as(platform, tool, "u-teacher").launch.status_code == 302
    course = Course.objects.get(lti_links__isnull=False)
    lena_walk = launch_as(platform, tool, "u-learner")
    chat = tool.base + lena_walk.launch.headers["Location"]
    assert lena_walk.browser.get(chat).status_code == 200
    local = User.objects.create_user("local-helper")
    knowledge_services.enroll(course=course, user=local, role=Enrollment.Role.INSTRUCTOR)
    platform.add_user("u-new", "Nora New", ["Learner"])
    platform.add_user("u-ta", "Tia Assistant", ["Instructor"])

    call_command("sync_roster", "--course", course.slug)
    roles = {e.user.username: e.role for e in Enrollment.objects.filter(course=course)}
    nora = Identity.objects.get(subject="u-new").user
    tia = Identity.objects.get(subject="u-ta").user
    assert roles[nora.username] == "learner" and roles[tia.username] == "instructor"
    assert tia.is_staff and (nora.first_name, nora.last_name) == ("Nora", "New")
    assert len(roles) == 5  # teacher, learner, the two new ones, the local helper

    # In Moodle: Nora is unenrolled, Lena's enrolment is suspended.
    del platform.state.users["u-new"]
    platform.state.users["u-learner"].status = "Inactive"
    admin = User.objects.create_superuser("root", password="pw-root-123")
    client = Client()
    client.force_login(admin)
    link = CourseLink.objects.get(course=course)
    response = client.post(
        "/admin/lti/courselink/",
        {"action": "sync_roster", "_selected_action": [link.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert "3 members in Moodle; 0 added, 0 changed role, 2 removed." in response.content.decode()
    lena = Identity.objects.get(subject="u-learner").user
    assert not course.has_member(nora) and not course.has_member(lena)
    assert course.has_member(local) and course.is_taught_by(tia)
    # Lena's open chat is gone for her.
    assert lena_walk.browser.get(chat).status_code == 404
    link.refresh_from_db()
    assert link.roster_synced_at is not None


def test_a_roster_the_platform_refuses_is_reported(platform: PlatformServer, tool: Tool) -> None:
    assert launch_as(platform, tool, "u-teacher").launch.status_code == 302
    course = Course.objects.get(lti_links__isnull=False)
    platform.state.token_html = True
    errors = StringIO()
    with pytest.raises(CommandError, match=r"1 roster\(s\) could not be read"):
        call_command("sync_roster", "--course", course.slug, stderr=errors)
    assert "web page instead of JSON" in errors.getvalue()
    with pytest.raises(CommandError, match="not linked"):
        call_command("sync_roster", "--course", "no-such-course")
