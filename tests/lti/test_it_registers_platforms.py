"""Registering a platform in the back office shows the tool's URLs to paste into Moodle."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.test import Client
from lti_tool.models import LtiRegistration

from knowledge import services as knowledge_services
from knowledge.models import Course, Enrollment

pytestmark = pytest.mark.django_db

MOODLE = "https://moodle.example.edu"


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="pw-root-123"))
    return client


def _form(**fields: str) -> dict[str, str]:
    return {
        "name": "Our Moodle",
        "issuer": MOODLE,
        "client_id": "aBcD1234",
        "auth_url": "",
        "token_url": "",
        "keyset_url": "",
        "audience": "",
        "is_active": "on",
        "deployments-TOTAL_FORMS": "1",
        "deployments-INITIAL_FORMS": "0",
        "deployments-MIN_NUM_FORMS": "0",
        "deployments-MAX_NUM_FORMS": "1000",
        "deployments-0-deployment_id": "1",
        "deployments-0-is_active": "on",
        **fields,
    }


def test_the_add_form_shows_the_urls_for_moodle_and_saves_them(admin_client: Client) -> None:
    page = admin_client.get("/admin/lti_tool/ltiregistration/add/").content.decode()
    [uuid] = re.findall(r"http://testserver/lti/init/([0-9a-f-]{36})/", page)
    assert f'value="{uuid}"' in page
    for label in ("Tool URL", "Public keyset URL", "Initiate login URL", "Redirection URI(s)"):
        assert label in page
    assert "http://testserver/lti/launch/" in page and "http://testserver/lti/jwks/" in page

    response = admin_client.post("/admin/lti_tool/ltiregistration/add/", _form(uuid=uuid))
    registration = LtiRegistration.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/admin/lti_tool/ltiregistration/{registration.pk}/change/"
    assert str(registration.uuid) == uuid
    assert (registration.auth_url, registration.token_url, registration.keyset_url) == (
        f"{MOODLE}/mod/lti/auth.php",
        f"{MOODLE}/mod/lti/token.php",
        f"{MOODLE}/mod/lti/certs.php",
    )
    [deployment] = registration.deployments.all()
    assert deployment.deployment_id == "1" and deployment.is_active
    change = admin_client.get(response["Location"]).content.decode()
    assert f"http://testserver/lti/init/{uuid}/" in change


def test_an_issuer_with_a_trailing_slash_is_refused(admin_client: Client) -> None:
    response = admin_client.post(
        "/admin/lti_tool/ltiregistration/add/", _form(uuid="", issuer=MOODLE + "/")
    )
    assert response.status_code == 200 and "no trailing slash" in response.content.decode()
    assert not LtiRegistration.objects.exists()


def test_instructors_do_not_see_registrations(course: Course, instructor: User) -> None:
    client = Client()
    client.force_login(instructor)
    assert client.get("/admin/lti_tool/ltiregistration/").status_code == 403
    assert client.get("/admin/lti/courselink/").status_code == 200
    assert client.get("/admin/lti/grading/").status_code == 200
    learner = User.objects.create_user("lea")
    knowledge_services.enroll(course=course, user=learner, role=Enrollment.Role.LEARNER)
    client.force_login(learner)
    assert client.get("/admin/lti/courselink/").status_code == 302
