"""The door from Moodle: login initiation, launch, the key set and the deep-linking picker.

See `lti.launch` for how a launch flows and where each check lives.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import jwt
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from lti_tool.models import Key, LtiContext
from lti_tool.views import OIDCLoginInitView
from pylti1p3.deep_link_resource import DeepLinkResource
from pylti1p3.exception import LtiException, OIDCException
from pylti1p3.lineitem import LineItem

from knowledge.models import Course, Skill
from lti import services
from lti.keys import ensure_signing_key
from lti.launch import CLAIM, LaunchRefused, StrictLaunch
from lti.middleware import LAUNCH_SESSION_KEY
from lti.models import CourseLink, Identity

logger = logging.getLogger(__name__)


def _claimed_issuer(request: HttpRequest) -> str:
    """For the log only: the issuer a request claims, unverified."""
    issuer = request.POST.get("iss") or request.GET.get("iss")
    if not issuer and request.POST.get("id_token"):
        try:
            claims = jwt.decode(request.POST["id_token"], options={"verify_signature": False})
            issuer = str(claims.get("iss", ""))
        except jwt.InvalidTokenError:
            issuer = "an undecodable token"
    return issuer or "-"


def refused(
    request: HttpRequest, reason: Any, *, status: int = 403, what: str = "launch"
) -> HttpResponse:
    """The error page of every refusal: the reason, logged with who claimed to ask."""
    logger.warning(
        "LTI %s refused (claimed issuer %s, from %s): %s",
        what,
        _claimed_issuer(request),
        request.META.get("REMOTE_ADDR", "?"),
        reason,
    )
    return render(request, "lti/refused.html", {"reason": str(reason), "what": what}, status=status)


class LoginView(OIDCLoginInitView):
    """/lti/init/<registration-uuid>/: OIDC third-party login initiation (GET or POST)."""

    def get_redirect_url(self, target_link_uri: str) -> str:
        # django-lti sends target_link_uri as the redirect_uri; Moodle matches redirect_uri
        # exactly against the registered lines, so always our one launch URL.
        return self.request.build_absolute_uri(reverse("lti:launch"))

    def get_oidc_response(self, request: HttpRequest, registration_uuid: Any, params: Any) -> Any:
        if not params.get("target_link_uri"):
            return refused(request, "the login has no target_link_uri", status=400, what="login")
        ensure_signing_key()
        try:
            return super().get_oidc_response(request, registration_uuid, params)
        except (OIDCException, LtiException) as exc:  # stock: an HTTP 500
            return refused(request, exc, what="login")


@never_cache
@csrf_exempt  # a cross-site form post from the platform, authenticated by its signed token
@require_POST
def launch(request: HttpRequest) -> HttpResponse:
    """/lti/launch/: validate the id_token, admit the user, open the chat or the course."""
    ensure_signing_key()
    try:
        message = StrictLaunch(request)
        message.validate()
        admission = services.admit(launch=message)
    except (LaunchRefused, LtiException) as exc:
        return refused(request, exc)
    login(request, admission.user, backend="django.contrib.auth.backends.ModelBackend")
    request.session[LAUNCH_SESSION_KEY] = admission.launch_id
    for note in admission.notes:
        messages.warning(request, note)
    if admission.is_deep_linking:
        response = _picker(request, admission.course, admission.launch_id)
    elif admission.teaches:
        response = redirect("admin:knowledge_course_change", admission.course.pk)
    else:
        conversation = services.open_chat(
            user=admission.user, course=admission.course, focus=admission.focus_skill
        )
        response = redirect("tutoring:chat", conversation=conversation.pk)
    # The state is single-use too.
    response.delete_cookie(f"lti1p3-{request.POST['state']}")
    return response


def _picker(request: HttpRequest, course: Course, launch_id: str) -> HttpResponse:
    return render(
        request,
        "lti/deep_link.html",
        {"course": course, "skills": course.skills.order_by("name"), "launch_id": launch_id},
    )


@never_cache
@login_required
@require_POST
def deep_link(request: HttpRequest) -> HttpResponse:
    """/lti/deep-link/: the instructor picked a skill; send it back to the platform as an
    activity (an ltiResourceLink with custom `skill=<name>`), signed with the tool's key."""
    user = cast(User, request.user)
    try:
        message = StrictLaunch.restore(request, request.POST.get("launch", ""))
        claims = message.claims
        if claims.get(CLAIM + "message_type") != "LtiDeepLinkingRequest":
            raise LaunchRefused("that launch did not ask for an activity")
        if not Identity.objects.filter(
            issuer=claims["iss"], subject=claims["sub"], user=user
        ).exists():
            raise LaunchRefused("that launch belongs to someone else")
        course = _course_of(message)
        if course is None or not course.is_taught_by(user):
            raise LaunchRefused("only the course's instructors may add activities")
        skill = None
        raw = request.POST.get("skill", "")
        if raw:
            skill = Skill.objects.filter(
                course=course, pk=int(raw) if raw.isdigit() else -1
            ).first()
            if skill is None:
                raise LaunchRefused("that skill is not part of this course")
    except (LaunchRefused, LtiException) as exc:
        return refused(request, exc, what="deep linking")
    topic = skill.name if skill else course.title
    title = f"Tutor: {topic}"
    resource = (
        DeepLinkResource()
        .set_url(request.build_absolute_uri(reverse("lti:launch")))
        .set_title(title)
        .set_custom_params({"skill": skill.name} if skill else {})
        # A gradebook column for the activity, where its mastery is posted.
        .set_lineitem(LineItem().set_score_maximum(100).set_label(f"Mastery: {topic}"))
    )
    logger.info("deep link for %s: %s", course.slug, title)
    return HttpResponse(message.get_deep_link().output_response_form([resource]))


def _course_of(message: StrictLaunch) -> Course | None:
    claims = message.claims
    context = LtiContext.objects.filter(
        deployment__registration__issuer=claims["iss"],
        deployment__registration__client_id=message.get_client_id(),
        deployment__deployment_id=claims.get(CLAIM + "deployment_id"),
        id_on_platform=(claims.get(CLAIM + "context") or {}).get("id", ""),
    )
    link = CourseLink.objects.select_related("course").filter(context__in=context).first()
    return link.course if link else None


@require_GET
def jwks(request: HttpRequest) -> JsonResponse:
    """/lti/jwks/: the tool's public keys (every active one), for platforms to verify us."""
    ensure_signing_key()
    response = JsonResponse(Key.objects.as_jwks())
    response["Cache-Control"] = "public, max-age=300"
    return response
