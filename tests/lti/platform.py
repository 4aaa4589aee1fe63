"""A real LTI 1.3 platform for the tests: the core of `lti1p3platform` (PyPI) behind a stdlib
ThreadingHTTPServer on 127.0.0.1. It signs the id_tokens, serves its key set and token
endpoint, receives AGS scores, answers NRPS and validates deep-linking responses, and checks
what Moodle's auth.php checks (registered redirect_uri, form_post, prompt, login_hint).

Endpoints under http://127.0.0.1:<port> (also the issuer), Moodle-like where it matters:

    GET  /auth                         OIDC auth request -> auto-submitting form (id_token, state)
    GET  /jwks                         the platform's key set
    POST /token                        client_credentials + signed JWT -> bearer token
    GET  /lineitems/<id>/lineitem      a line item; POST .../scores: a score (?type_id=1 kept)
    GET  /memberships                  the NRPS membership container
    POST /deep_link_return             a deep-linking response (form field JWT)
"""

from __future__ import annotations

import html
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from lti1p3platform.exceptions import LtiServiceException
from lti1p3platform.ltiplatform import LTI1P3PlatformConfAbstract
from lti1p3platform.membership import Context
from lti1p3platform.message_launch import LTIAdvantageMessageLaunchAbstract
from lti1p3platform.oidc_login import OIDCLoginAbstract
from lti1p3platform.registration import Registration
from lti1p3platform.request import Request
from lti1p3platform.score import UpdateScoreStatus
from lti1p3platform.service_connector import (
    AssignmentsGradesService,
    NamesRoleProvisioningService,
)

ROLE = "http://purl.imsglobal.org/vocab/lis/v2/membership#"
CLAIM = "https://purl.imsglobal.org/spec/lti/claim/"


def new_rsa_pem() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


@dataclass
class PlatformUser:
    user_id: str
    name: str
    email: str
    roles: list[str]
    status: str = "Active"


def _context() -> dict[str, str]:
    return {"id": "moodle-course-42", "title": "Pump Maintenance", "label": "PUMPS101"}


@dataclass
class PlatformState:
    """What the platform knows and has seen; tests change it freely (reset between tests)."""

    issuer: str = ""
    client_id: str = "tutor-client-id"
    deployment_id: str = "1"
    tool_login_url: str = ""
    tool_launch_url: str = ""
    tool_jwks_url: str = ""
    redirect_uris: list[str] = field(default_factory=list)
    private_key: str = ""
    public_key: str = ""
    extra_public_keys: list[str] = field(default_factory=list)
    users: dict[str, PlatformUser] = field(default_factory=dict)
    context: dict[str, str] = field(default_factory=_context)
    resource_link_id: str = "cmid-7"
    custom: dict[str, str] = field(default_factory=dict)
    with_ags: bool = True
    with_nrps: bool = True
    deep_linking: bool = False
    token_html: bool = False  # Moodle's "The URL is blocked." page instead of a token
    fail_scores: int = 0  # answer this many score posts with HTTP 500
    mutate_claims: Callable[[dict[str, Any]], None] | None = None
    sign: Callable[[dict[str, Any], PlatformState], str] | None = None
    scores: list[dict[str, Any]] = field(default_factory=list)
    deep_link_items: list[dict[str, Any]] = field(default_factory=list)
    hits: dict[str, int] = field(default_factory=dict)


class DictRequest(Request):
    """lti1p3platform's request, from the dict the handler builds."""

    def build_metadata(self, request: dict[str, Any]) -> dict[str, Any]:
        return request


class PlatformConf(LTI1P3PlatformConfAbstract):
    """Made afresh per request, so the tool's key set is fetched anew (key rotation)."""

    def init_platform_config(self, state: PlatformState) -> None:
        self.state = state
        self._registration = (
            Registration()
            .set_iss(state.issuer)
            .set_client_id(state.client_id)
            .set_deployment_id(state.deployment_id)
            .set_launch_url(state.tool_launch_url)
            .set_deeplink_launch_url(state.tool_launch_url)
            .set_oidc_login_url(state.tool_login_url)
            .set_tool_key_set_url(state.tool_jwks_url)
            .set_platform_public_key(state.public_key)
            .set_platform_private_key(state.private_key)
        )

    def get_registration_by_params(self, **kwargs: Any) -> Registration:
        return self._registration

    def get_jwks(self) -> dict[str, Any]:
        pems = [self.state.public_key, *self.state.extra_public_keys]
        return {"keys": [Registration.get_jwk(pem) for pem in pems]}


class LoginInitiation(OIDCLoginAbstract):
    def set_lti_message_hint(self, **kwargs: Any) -> None:
        self._lti_message_hint = json.dumps(kwargs)

    def get_redirect(self, url: str) -> str:
        return url


class Launch(LTIAdvantageMessageLaunchAbstract):
    def __init__(self, request: Request, conf: PlatformConf) -> None:
        super().__init__(request, conf)
        self.state = conf.state

    def validate_preflight_response(self, response: dict[str, Any]) -> None:
        """What Moodle's auth.php insists on, beyond the library's own checks."""
        super().validate_preflight_response(response)
        problems = []
        if response.get("redirect_uri") not in self.state.redirect_uris:
            problems.append("redirect_uri is not registered")
        if response.get("response_mode") != "form_post":
            problems.append("response_mode must be form_post")
        if response.get("prompt") not in (None, "", "none"):
            problems.append("bad prompt")
        if response.get("scope") != "openid" or response.get("response_type") != "id_token":
            problems.append("bad scope or response_type")
        if response.get("login_hint") not in self.state.users:
            problems.append("unknown login_hint")
        if problems:
            raise ValueError("; ".join(problems))

    def prepare_launch(self, preflight_response: dict[str, Any]) -> None:
        state = self.state
        user = state.users[preflight_response["login_hint"]]
        self.set_user_data(user.user_id, user.roles, full_name=user.name, email_address=user.email)
        ctx = state.context
        self.set_launch_context_claim(
            ctx["id"],
            ["http://purl.imsglobal.org/vocab/lis/v2/course#CourseOffering"],
            ctx["title"],
            ctx["label"],
        )
        self.set_launch_presentation_claim("iframe", state.issuer + "/course/view.php?id=42")
        if state.deep_linking:
            self.set_dl(
                state.issuer + "/deep_link_return",
                title="Add an activity",
                accept_types={"ltiResourceLink"},
                extra_data="moodle-dl-data-7",
            )
            return
        self.set_resource_link_claim(state.resource_link_id, title="AI tutor")
        if state.custom:
            self.set_custom_parameters_claim(dict(state.custom))
        base = state.issuer
        if state.with_ags:
            # Moodle-style: the line item URLs carry a query string.
            self.set_ags(
                base + "/lineitems?type_id=1",
                f"{base}/lineitems/{state.resource_link_id}/lineitem?type_id=1",
            )
        if state.with_nrps:
            self.set_nrps(base + "/memberships")

    def generate_launch_request(self) -> dict[str, str]:
        message, state = self.get_launch_data()
        if self._dl is not None:
            message[CLAIM + "message_type"] = "LtiDeepLinkingRequest"
            message.update(self._deep_linking_launch_data or {})
        message["iat"] = int(time.time())
        message["exp"] = message["iat"] + self.id_token_expiration
        if self.state.mutate_claims:
            self.state.mutate_claims(message)
        if self.state.sign:
            token = self.state.sign(message, self.state)
        else:
            token = self._registration.platform_encode_and_sign(message)
        return {"state": state, "id_token": token}

    def render_launch_form(self, launch_data: dict[str, str], **kwargs: Any) -> str:
        inputs = "".join(
            f'<input type="hidden" name="{name}" value="{html.escape(value)}">'
            for name, value in launch_data.items()
            if name != "launch_url"
        )
        action = html.escape(launch_data["launch_url"])
        return f'<form id="f" method="post" action="{action}">{inputs}</form>'


class Ags(AssignmentsGradesService):
    def __init__(self, request: Request, conf: PlatformConf) -> None:
        base = conf.state.issuer
        super().__init__(request, conf, base + "/lineitems", base + "/lineitems/x/lineitem")
        self.state = conf.state

    def update_score(self, line_item_id: str, score: dict[str, Any]) -> Any:
        self.state.scores.append({"line_item": line_item_id, **score})
        return UpdateScoreStatus.SUCCESS

    def find_lineitem(self, line_item_id: str) -> dict[str, Any]:
        return {
            "id": f"{self.state.issuer}/lineitems/{line_item_id}/lineitem",
            "scoreMaximum": 100,
            "label": "AI tutor",
            "resourceLinkId": line_item_id,
        }

    def find_lineitems(self, **kwargs: Any) -> dict[str, Any]:
        return {"content": [self.find_lineitem(self.state.resource_link_id)], "has_next": False}

    def create_lineitem(self, data: Any) -> Any:
        raise NotImplementedError

    def update_lineitem(self, data: Any) -> Any:
        raise NotImplementedError

    def delete_lineitem(self, line_item_id: str) -> Any:
        raise NotImplementedError

    def get_results(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"content": [], "has_next": False}


class Nrps(NamesRoleProvisioningService):
    def __init__(self, request: Request, conf: PlatformConf) -> None:
        super().__init__(request, conf, conf.state.issuer + "/memberships")
        self.state = conf.state

    def get_context_by_id(self) -> Context:
        ctx = self.state.context
        return Context(id=ctx["id"], label=ctx["label"], title=ctx["title"])

    def is_resource_link_valid(self, context_id: str, resource_link_id: str) -> bool:
        return resource_link_id == self.state.resource_link_id

    def get_member_data_page(self, **kwargs: Any) -> dict[str, Any]:
        members = [
            {
                "user_id": user.user_id,
                "name": user.name,
                "email": user.email,
                "roles": user.roles,
                "status": user.status,
            }
            for user in self.state.users.values()
        ]
        return {"content": members, "has_next": False}


def _check_deep_link(conf: PlatformConf, form: dict[str, str]) -> list[dict[str, Any]]:
    """lti1p3platform verifies the signature against the tool's key set; Moodle also checks
    who it is from and for."""
    state = conf.state
    items = conf.validate_deeplinking_resp(form)
    claims = jwt.decode(form["JWT"], options={"verify_signature": False})
    if claims.get("iss") != state.client_id:
        raise ValueError("deep-linking response: iss is not the client id")
    aud = claims.get("aud")
    if state.issuer not in (aud if isinstance(aud, list) else [aud]):
        raise ValueError("deep-linking response: aud is not this platform")
    if claims.get(CLAIM + "deployment_id") != state.deployment_id:
        raise ValueError("deep-linking response: wrong deployment id")
    if claims.get("https://purl.imsglobal.org/spec/lti-dl/claim/data") != "moodle-dl-data-7":
        raise ValueError("deep-linking response: the data claim did not come back")
    return items


class _Handler(BaseHTTPRequestHandler):
    platform: PlatformServer

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
        raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _request(self) -> dict[str, Any]:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        content_type = self.headers.get("Content-Type", "")
        return {
            "method": self.command,
            "path": url.path,
            "get_data": dict(parse_qsl(url.query)),
            "form_data": dict(parse_qsl(raw.decode())) if "form" in content_type else {},
            "json": json.loads(raw) if raw and "json" in content_type else None,
            "headers": dict(self.headers.items()),
            "content_type": content_type,
        }

    def _dispatch(self) -> None:
        request = self._request()
        state = self.platform.state
        path = request["path"]
        with self.platform.lock:
            state.hits[path] = state.hits.get(path, 0) + 1
        conf = PlatformConf(state=state)
        try:
            if path == "/jwks":
                return self._send(200, conf.get_jwks())
            if path == "/auth":
                launch = Launch(DictRequest(request), conf)
                return self._send(200, launch.lti_launch(), "text/html")
            if path == "/token":
                if state.token_html:
                    return self._send(
                        200, "<html><body>The URL is blocked.</body></html>", "text/html"
                    )
                try:
                    return self._send(200, conf.get_access_token(request["form_data"]))
                except Exception as exc:
                    return self._send(400, {"error": "invalid_client", "detail": str(exc)})
            match = re.fullmatch(r"/lineitems/([^/]+)/lineitem(/scores)?", path)
            if match:
                if match.group(2) and state.fail_scores > 0:
                    state.fail_scores -= 1
                    return self._send(500, {"error": "the gradebook is down"})
                ags = Ags(DictRequest(request), conf)
                if match.group(2):
                    response = ags.handle_update_score(match.group(1))
                else:
                    response = ags.handle_get_lineitem(match.group(1))
                body = response.result if response.code < 300 else {"error": response.message}
                return self._send(response.code, body)
            if path == "/memberships":
                response = Nrps(DictRequest(request), conf).handle_get_members()
                body = response.result if response.code < 300 else {"error": response.message}
                return self._send(response.code, body)
            if path == "/deep_link_return":
                items = _check_deep_link(conf, request["form_data"])
                state.deep_link_items.extend(items)
                return self._send(200, {"accepted": items})
            return self._send(404, {"error": "not found"})
        except LtiServiceException as exc:
            return self._send(exc.status_code, {"error": exc.message})
        except Exception as exc:
            return self._send(400, {"error": f"{type(exc).__name__}: {exc}"})

    do_GET = do_POST = do_PUT = do_DELETE = _dispatch


class PlatformServer:
    """`.start()`, then `.url` is the issuer; `.reset()` between tests."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state = PlatformState()
        handler = type("Handler", (_Handler,), {"platform": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._keys = new_rsa_pem()
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.reset()

    def reset(self) -> None:
        self.state = PlatformState(
            issuer=self.url, private_key=self._keys[0], public_key=self._keys[1]
        )

    def start(self) -> PlatformServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def add_user(self, user_id: str, name: str, roles: list[str]) -> None:
        self.state.users[user_id] = PlatformUser(
            user_id, name, f"{user_id}@example.edu", [ROLE + role for role in roles]
        )

    def rotate_key(self, *, keep_old: bool = True) -> None:
        if keep_old:
            self.state.extra_public_keys.append(self.state.public_key)
        self.state.private_key, self.state.public_key = new_rsa_pem()

    def kid(self) -> str:
        return str(Registration.get_jwk(self.state.public_key)["kid"])

    def login_initiation_params(self, user_id: str) -> dict[str, str]:
        """What Moodle posts to the tool's Initiate login URL."""
        login = LoginInitiation(None, PlatformConf(state=self.state))
        login.set_lti_message_hint(cmid=7, launchid="ltilaunch" + uuid.uuid4().hex[:8])
        url = login.initiate_login(user_id)
        return dict(parse_qsl(urlsplit(url).query))
