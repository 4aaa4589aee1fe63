"""Who may show our pages in a frame.

The LTI pages (login initiation, launch, deep linking) and, in a session that an LTI launch
opened, the pages a launch leads to (the chat, the course pages, the home page and the
instructors' back office) may be framed by the registered platforms (CSP `frame-ancestors`
with their origins, computed from the active registrations). Every other page keeps Django's
`X-Frame-Options: DENY`.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from django.http import HttpRequest, HttpResponse
from lti_tool.models import LtiRegistration

#: URL namespaces framed whenever a platform is registered.
ALWAYS = {"lti"}
#: URL namespaces and names framed in a session that an LTI launch opened.
IN_LTI_SESSION = {"tutoring", "admin", "home"}
#: The session key, set by the launch view, holding the launch that opened the session.
LAUNCH_SESSION_KEY = "lti_launch_id"


def platform_origins() -> list[str]:
    """The origins of every active registration (issuer and auth URL: Moodle's wwwroot)."""
    origins: set[str] = set()
    for urls in LtiRegistration.objects.active().values_list("issuer", "auth_url"):
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme in ("http", "https") and parts.netloc:
                origins.add(f"{parts.scheme}://{parts.netloc}")
    return sorted(origins)


def frame_ancestors(origins: list[str]) -> str:
    return "frame-ancestors 'self' " + " ".join(origins)


class FramingMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if self._may_be_framed(request):
            origins = platform_origins()
            if origins:
                directive = frame_ancestors(origins)
                existing = response.get("Content-Security-Policy", "")
                if "frame-ancestors" not in existing:
                    response["Content-Security-Policy"] = (
                        f"{existing}; {directive}" if existing else directive
                    )
                # Instead of X-Frame-Options: DENY (XFrameOptionsMiddleware, after us).
                response.xframe_options_exempt = True
        return response

    @staticmethod
    def _may_be_framed(request: HttpRequest) -> bool:
        match = getattr(request, "resolver_match", None)
        if match is None:
            return False
        names = {match.namespace, match.url_name} - {None, ""}
        if names & ALWAYS:
            return True
        if not names & IN_LTI_SESSION:
            return False
        session = getattr(request, "session", None)
        return session is not None and bool(session.get(LAUNCH_SESSION_KEY))
