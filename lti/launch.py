"""Validating an LTI 1.3 launch (1EdTech Security Framework), stricter than pylti1p3 alone.

How a launch flows, and where each check lives:

1. Moodle posts the login initiation to ``/lti/init/<registration-uuid>/`` (``views.LoginView``,
   django-lti's ``OIDCLoginInitView``). pylti1p3 finds the registration by issuer and client
   id, stores a nonce in the cache, sets the state cookie ``lti1p3-<state>`` (5 minutes) and
   sends the browser to the platform's auth URL with ``redirect_uri`` = our one launch URL
   (Moodle matches it exactly). With cookies blocked in the iframe, the first answer is
   pylti1p3's cookie check, which offers to open the tool in a new window.
2. Moodle posts ``id_token`` and ``state`` to ``/lti/launch/`` (``views.launch``).
   ``StrictLaunch.validate()`` checks, writing nothing (an unknown kid may refresh the key
   cache, never more than once a minute):

   - ``validate_state``: ``state`` equals the state cookie. pylti1p3 also accepts a cache
     entry left by an earlier launch of the same token, a replay path: not here.
   - ``validate_header``: three parts; header ``alg`` is RS256 and names a ``kid`` (so
     ``none`` and HS256 are refused before any key is looked at).
   - ``validate_registration``: an active registration for ``iss`` + client id (``aud``).
   - ``validate_jwt_signature``: the signature against the platform's key set
     (``PlatformKeys``: cached, one rate-limited refetch on an unknown kid, HTTP timeout),
     with ``exp``, ``iat``, ``iss``, ``aud``, ``sub`` and ``nonce`` required, ``iss`` equal to
     the registration's and ``aud`` containing our client id (clock leeway
     ``TUTOR_LTI_CLOCK_LEEWAY``). From here on only the verified claims are used.
   - ``validate_claims``: ``azp`` (required when ``aud`` lists several), ``iat`` not older
     than ``TUTOR_LTI_MAX_TOKEN_AGE``, ``message_type``, ``deployment_id`` and
     ``target_link_uri`` present, the last on this tool's host.
   - ``validate_nonce``: we issued this nonce at login (read only).
   - ``validate_deployment``: the deployment id is registered and active
     (``StrictToolConfig``; django-lti would create unknown ones).
   - ``validate_message``: pylti1p3's per-type validators (version, roles, resource link,
     deep-linking settings).
3. ``services.admit`` then runs in one transaction: ``spend_nonce`` (the unique
   (issuer, nonce) row: of any number of replays, racing or not, exactly one gets through),
   ``save_launch_data`` (the claims, for the deep-linking answer later), django-lti's rows,
   the local user (by issuer + subject), the course (linked, or created on the first
   instructor launch) and the enrollment. A refusal anywhere rolls all of it back.
4. The view logs the user in on a new session key, drops the state cookie and redirects:
   learners to the chat, instructors to the course's back office, deep linking to the skill
   picker. Every refusal is a ``LaunchRefused`` (or pylti1p3's ``LtiException``): logged, and
   answered 403 with ``templates/lti/refused.html``.

Framing (``middleware.FramingMiddleware``): pages of an LTI session may be framed by the
registered platforms' origins (CSP ``frame-ancestors``); every other page keeps
``X-Frame-Options: DENY``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests
from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from jwcrypto.jwk import JWK
from lti_tool.models import LtiDeployment
from lti_tool.utils import DjangoToolConfig
from pylti1p3.contrib.django import DjangoCacheDataStorage, DjangoMessageLaunch
from pylti1p3.deployment import Deployment
from pylti1p3.exception import LtiException

from lti.models import UsedNonce

logger = logging.getLogger(__name__)

CLAIM = "https://purl.imsglobal.org/spec/lti/claim/"
SUPPORTED_MESSAGES = ("LtiResourceLinkRequest", "LtiDeepLinkingRequest")


class LaunchRefused(Exception):
    """A launch the tool refuses; the message is shown to the user and logged."""


class TimeoutSession(requests.Session):
    """pylti1p3 passes no timeout to requests: a platform that hangs would hang a worker."""

    def __init__(self, timeout: float | None = None) -> None:
        super().__init__()
        self.timeout = timeout if timeout is not None else settings.TUTOR_LTI_HTTP_TIMEOUT
        self.headers["User-Agent"] = "adaptive-tutor-lti"

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        return super().request(*args, **kwargs)


class PlatformKeys:
    """A platform's public key set, cached; an unknown kid refetches it at most once per
    TUTOR_LTI_JWKS_REFETCH_SECONDS (a forged kid must not turn every launch into a fetch)."""

    def __init__(self, session: requests.Session) -> None:
        self.session = session

    @staticmethod
    def _cache_key(url: str) -> str:
        return "lti-jwks-" + hashlib.sha256(url.encode()).hexdigest()

    def _fetch(self, url: str) -> dict[str, Any]:
        try:
            response = self.session.get(url)
            response.raise_for_status()
            jwks = response.json()
        except (requests.RequestException, ValueError) as exc:
            raise LaunchRefused(f"could not read the platform's keys at {url}: {exc}") from exc
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise LaunchRefused(f"the platform's key set at {url} has no 'keys' list")
        cache.set(self._cache_key(url), jwks, settings.TUTOR_LTI_JWKS_CACHE_SECONDS)
        return jwks

    def find(self, url: str, kid: str) -> dict[str, Any]:
        jwks = cache.get(self._cache_key(url))
        fetched = jwks is None
        if jwks is None:
            jwks = self._fetch(url)
        key = _match(jwks, kid)
        if key is None and not fetched:
            # cache.add is atomic (database and Redis caches): one caller per interval wins.
            if cache.add(
                self._cache_key(url) + "-refetch", 1, settings.TUTOR_LTI_JWKS_REFETCH_SECONDS
            ):
                logger.info("unknown key id %s: fetching %s again", kid, url)
                key = _match(self._fetch(url), kid)
            else:
                logger.warning("unknown key id %s: refetch of %s is rate-limited", kid, url)
        if key is None:
            raise LaunchRefused(f"the token is signed with an unknown key (kid {kid!r})")
        return key


def _match(jwks: dict[str, Any], kid: str) -> dict[str, Any] | None:
    for key in jwks.get("keys", []):
        if (
            isinstance(key, dict)
            and key.get("kid") == kid
            and key.get("kty") == "RSA"
            and key.get("alg", "RS256") == "RS256"
        ):
            return key
    return None


class StrictToolConfig(DjangoToolConfig):
    """django-lti's tool configuration, except that an unknown or inactive deployment id is
    refused instead of being created (inactive) from a launch."""

    def find_deployment_by_params(
        self, iss: str, deployment_id: str, client_id: str, *args: Any, **kwargs: Any
    ) -> Deployment | None:
        found = (
            LtiDeployment.objects.active()
            .filter(
                registration__issuer=iss,
                registration__client_id=client_id,
                registration__is_active=True,
                deployment_id=deployment_id,
            )
            .select_related("registration")
            .first()
        )
        if found is None:
            return None
        self.deployment = found
        return Deployment().set_deployment_id(found.deployment_id)


def launch_data_storage() -> DjangoCacheDataStorage:
    # caches["default"]: django-lti hard-codes the same alias.
    return DjangoCacheDataStorage()


class StrictLaunch(DjangoMessageLaunch):
    """pylti1p3's message launch with every check of the module docstring."""

    def __init__(self, request: HttpRequest, tool_config: DjangoToolConfig | None = None) -> None:
        super().__init__(
            request,
            tool_config or StrictToolConfig(),
            launch_data_storage=launch_data_storage(),
            requests_session=TimeoutSession(),
        )

    @classmethod
    def restore(cls, request: HttpRequest, launch_id: str) -> StrictLaunch:
        """A launch validated earlier, from the cache (its claims only: no checks run again)."""
        restored = cls(request)
        data = None
        if re.fullmatch(r"lti1p3-launch-[0-9a-f-]{36}", launch_id):
            data = restored.get_session_service().get_launch_data(launch_id)
        if not data:
            raise LaunchRefused("that launch is unknown or has expired: open the tool again")
        restored.set_launch_id(launch_id)
        restored.set_auto_validation(enable=False)
        restored.set_jwt({"body": data})
        restored.set_restored()
        restored.validate_registration()
        return restored

    def validate(self) -> StrictLaunch:
        if self._restored:
            raise LtiException("a restored launch cannot be validated again")
        self._validated = True
        try:
            self.validate_state()
            self.validate_header()
            self.validate_registration()
            self.validate_jwt_signature()
            self.validate_claims()
            self.validate_nonce()
            self.validate_deployment()
            self.validate_message()
        except Exception:
            self._validated = False
            raise
        return self

    def validate_state(self) -> StrictLaunch:
        state = self._get_request_param("state")
        if not state:
            raise LaunchRefused("the launch has no state")
        if self._cookie_service.get_cookie(state) != state:
            raise LaunchRefused(
                "the state does not match this browser's login (cookie missing or different)"
            )
        return self

    def validate_header(self) -> StrictLaunch:
        self.validate_jwt_format()
        header = self._jwt.get("header", {})
        if header.get("alg") != "RS256":
            raise LaunchRefused(f"id_token signed with {header.get('alg')!r}; only RS256 is taken")
        if not header.get("kid"):
            raise LaunchRefused("id_token header names no key (kid)")
        return self

    def get_public_key(self) -> tuple[str, str]:
        assert self._registration is not None
        url = self._registration.get_key_set_url()
        if not url:
            raise LaunchRefused("the registration has no keyset URL")
        key = PlatformKeys(self._requests_session).find(url, self._jwt["header"]["kid"])
        return JWK(**key).export_to_pem().decode(), "RS256"

    def validate_jwt_signature(self) -> StrictLaunch:
        assert self._registration is not None
        public_key, _ = self.get_public_key()
        try:
            body = jwt.decode(
                self._get_id_token(),
                public_key,
                algorithms=["RS256"],
                audience=self._registration.get_client_id(),
                issuer=self._registration.get_issuer(),
                leeway=settings.TUTOR_LTI_CLOCK_LEEWAY,
                options={"require": ["exp", "iat", "iss", "aud", "sub", "nonce"]},
            )
        except jwt.InvalidTokenError as exc:
            raise LaunchRefused(f"invalid id_token: {exc}") from exc
        self._jwt["body"] = body  # type: ignore[typeddict-item]  # verified claims from here on
        return self

    def validate_claims(self) -> StrictLaunch:
        assert self._registration is not None
        body: dict[str, Any] = dict(self._jwt["body"])
        client_id = self._registration.get_client_id()
        audience = body["aud"] if isinstance(body["aud"], list) else [body["aud"]]
        azp = body.get("azp")
        if len(audience) > 1 and not azp:
            raise LaunchRefused("azp is required when aud names several clients")
        if azp is not None and azp != client_id:
            raise LaunchRefused("azp is not this tool's client id")
        if time.time() - float(body["iat"]) > settings.TUTOR_LTI_MAX_TOKEN_AGE:
            raise LaunchRefused("the id_token is too old (iat)")
        message_type = body.get(CLAIM + "message_type")
        if not message_type:
            raise LaunchRefused("the id_token has no message_type")
        if message_type not in SUPPORTED_MESSAGES:
            raise LaunchRefused(f"{message_type} launches are not supported")
        if not body.get(CLAIM + "deployment_id"):
            raise LaunchRefused("the id_token has no deployment_id")
        target = body.get(CLAIM + "target_link_uri")
        if not target:
            raise LaunchRefused("the id_token has no target_link_uri")
        if urlsplit(str(target)).netloc != self._request._request.get_host():
            raise LaunchRefused("target_link_uri points to another host")
        return self

    def validate_nonce(self) -> StrictLaunch:
        nonce = self._jwt["body"].get("nonce")
        if not nonce or not self._session_service.check_nonce(nonce):
            raise LaunchRefused("the nonce was not issued by this tool for this login")
        return self

    def validate_deployment(self) -> StrictLaunch:
        try:
            super().validate_deployment()
        except LtiException as exc:
            raise LaunchRefused(
                f"deployment {self._jwt['body'].get(CLAIM + 'deployment_id')!r} is not "
                "registered (or not active) for this platform"
            ) from exc
        return self

    def validate_message(self) -> StrictLaunch:
        try:
            super().validate_message()
        except LtiException as exc:
            raise LaunchRefused(f"the launch message is incomplete: {exc}") from exc
        return self

    def spend_nonce(self) -> None:
        """Spend the nonce, once for ever (until the token expires). Call in a transaction."""
        body = self._jwt["body"]
        expiry = float(body["exp"])  # type: ignore[typeddict-item]
        expires = datetime.fromtimestamp(expiry, tz=UTC) + timedelta(
            seconds=settings.TUTOR_LTI_CLOCK_LEEWAY
        )
        try:
            with transaction.atomic():
                UsedNonce.objects.create(
                    issuer=body["iss"], nonce=body["nonce"], expires_at=expires
                )
        except IntegrityError:
            raise LaunchRefused("this launch was already used (nonce replayed)") from None

    def save_launch_data(self) -> StrictLaunch:
        # Only the claims, under the launch id: pylti1p3 also marks (state, token) as valid,
        # which its state check would then accept again.
        self._session_service.save_launch_data(self._launch_id, self._jwt["body"])
        return self

    @property
    def claims(self) -> dict[str, Any]:
        return dict(self._jwt.get("body", {}))
