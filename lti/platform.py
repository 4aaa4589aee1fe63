"""Calls from the tool to the platform's services (AGS scores, NRPS rosters), through pylti1p3.

Every failure comes out as one `PlatformError` with a message an administrator can act on.
"""

from __future__ import annotations

import logging
from typing import Any

import requests
from django.utils import timezone
from lti_tool.models import LtiRegistration
from pylti1p3.assignments_grades import AssignmentsGradesService
from pylti1p3.exception import LtiException, LtiServiceException
from pylti1p3.grade import Grade
from pylti1p3.names_roles import NamesRolesProvisioningService
from pylti1p3.service_connector import ServiceConnector

from lti.keys import ensure_signing_key
from lti.launch import TimeoutSession

logger = logging.getLogger(__name__)

SCORE_SCOPE = "https://purl.imsglobal.org/spec/lti-ags/scope/score"
SCORE_MAXIMUM = 100.0

BLOCKED_HINT = (
    "the platform's token endpoint answered with a web page instead of JSON. Moodle does this "
    "when its HTTP security settings block this tool's keyset URL: allow the tool's host in "
    "'cURL blocked hosts list' and its port in 'cURL allowed ports list' "
    "(Site administration > General > Security > HTTP security)"
)


class PlatformError(Exception):
    """The platform could not be reached, refused the request or answered nonsense."""


def _connector(registration: LtiRegistration) -> ServiceConnector:
    ensure_signing_key()
    return ServiceConnector(registration.to_registration(), TimeoutSession())


def _call(what: str, registration: LtiRegistration, action: Any) -> Any:
    try:
        return action()
    except LtiServiceException as exc:
        raise PlatformError(f"{what}: {registration} answered an error: {exc}") from exc
    except requests.exceptions.JSONDecodeError as exc:
        raise PlatformError(f"{what}: {BLOCKED_HINT}") from exc
    except requests.RequestException as exc:
        raise PlatformError(f"{what}: could not reach {registration}: {exc}") from exc
    except (LtiException, ValueError, KeyError) as exc:
        raise PlatformError(f"{what}: {exc}") from exc


def post_score(
    *,
    registration: LtiRegistration,
    lineitem_url: str,
    scopes: list[str],
    subject: str,
    score: float,
) -> None:
    """Post `score` (out of SCORE_MAXIMUM) for the platform user `subject` to a line item."""
    if SCORE_SCOPE not in scopes:
        raise PlatformError("the platform did not grant the score scope for this activity")
    grade = (
        Grade()
        .set_score_given(score)
        .set_score_maximum(SCORE_MAXIMUM)
        .set_timestamp(timezone.now().isoformat(timespec="milliseconds"))
        # Mastery keeps moving as the learner practises; the grade is final for now.
        .set_activity_progress("InProgress")
        .set_grading_progress("FullyGraded")
        .set_user_id(subject)
    )

    def put() -> None:
        service = AssignmentsGradesService(
            _connector(registration),
            {"scope": scopes, "lineitem": lineitem_url},  # type: ignore[typeddict-item]
        )
        service.put_grade(grade)

    _call("posting a score", registration, put)


def fetch_members(*, registration: LtiRegistration, memberships_url: str) -> list[dict[str, Any]]:
    """Every member of a platform course (all pages), as NRPS gives them."""

    def fetch() -> list[dict[str, Any]]:
        service = NamesRolesProvisioningService(
            _connector(registration), {"context_memberships_url": memberships_url}
        )
        return [dict(member) for member in service.get_members()]

    members: list[dict[str, Any]] = _call("reading the roster", registration, fetch)
    return members
