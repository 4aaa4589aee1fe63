"""Forged, altered and replayed launches are refused (403, logged) and change nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import threading
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import requests
from django.contrib.auth.models import User
from lti_tool.models import LtiContext, LtiDeployment, LtiUser

from knowledge.models import Course, Enrollment
from lti.models import Identity, UsedNonce
from tests.lti.conftest import Tool, launch_as, new_browser, parse_form
from tests.lti.platform import PlatformServer, PlatformState, new_rsa_pem

CLAIM = "https://purl.imsglobal.org/spec/lti/claim/"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def kid_of(state: PlatformState) -> str:
    from lti1p3platform.registration import Registration

    return str(Registration.get_jwk(state.public_key)["kid"])


def sign_alg_none(message: dict[str, Any], state: PlatformState) -> str:
    head = b64(json.dumps({"alg": "none", "kid": kid_of(state), "typ": "JWT"}).encode())
    return f"{head}.{b64(json.dumps(message).encode())}."


def sign_hs256_with_the_public_key(message: dict[str, Any], state: PlatformState) -> str:
    head = b64(json.dumps({"alg": "HS256", "kid": kid_of(state), "typ": "JWT"}).encode())
    body = b64(json.dumps(message).encode())
    mac = hmac.new(state.public_key.encode(), f"{head}.{body}".encode(), hashlib.sha256)
    return f"{head}.{body}.{b64(mac.digest())}"


def sign_with_unknown_kid(message: dict[str, Any], state: PlatformState) -> str:
    private, _ = new_rsa_pem()
    return jwt.encode(message, private, algorithm="RS256", headers={"kid": "not-a-known-kid"})


def sign_with_known_kid_wrong_key(message: dict[str, Any], state: PlatformState) -> str:
    private, _ = new_rsa_pem()
    return jwt.encode(message, private, algorithm="RS256", headers={"kid": kid_of(state)})


def sign_without_kid(message: dict[str, Any], state: PlatformState) -> str:
    return jwt.encode(message, state.private_key, algorithm="RS256")


Mutation = Callable[[dict[str, Any]], None]


def drop(claim: str) -> Mutation:
    return lambda message: message.pop(claim, None)


def put(claim: str, value: Any) -> Mutation:
    def mutate(message: dict[str, Any]) -> None:
        message[claim] = value(message) if callable(value) else value

    return mutate


def shift(iat: int, exp: int) -> Mutation:
    def mutate(message: dict[str, Any]) -> None:
        message["iat"] += iat
        message["exp"] += exp

    return mutate


def aud_list_without_azp(message: dict[str, Any]) -> None:
    message["aud"] = [message["aud"], "another-client"]
    message.pop("azp")


# name, how the claims are altered, how the token is signed, the words of the refusal
FORGERIES: list[tuple[str, Mutation | None, Any, str]] = [
    ("alg_none", None, sign_alg_none, "only RS256"),
    ("hs256_with_the_public_key", None, sign_hs256_with_the_public_key, "only RS256"),
    ("unknown_kid", None, sign_with_unknown_kid, "unknown key"),
    ("known_kid_wrong_key", None, sign_with_known_kid_wrong_key, "Signature verification"),
    ("no_kid", None, sign_without_kid, "names no key"),
    ("wrong_iss", put("iss", "https://evil.example"), None, "Registration not found"),
    ("wrong_aud", put("aud", "someone-else"), None, "Registration not found"),
    ("aud_list_without_azp", aud_list_without_azp, None, "azp is required"),
    ("wrong_azp", put("azp", "someone-else"), None, "azp is not"),
    ("expired", shift(-900, -900), None, "expired"),
    ("missing_exp", drop("exp"), None, "exp"),
    ("missing_iat", drop("iat"), None, "iat"),
    ("iat_an_hour_old", shift(-3600, 3600), None, "too old"),
    ("iat_in_the_future", shift(600, 600), None, "not yet valid"),
    ("missing_nonce", drop("nonce"), None, "nonce"),
    ("foreign_nonce", put("nonce", "made-up-nonce"), None, "nonce was not issued"),
    ("missing_message_type", drop(CLAIM + "message_type"), None, "no message_type"),
    ("unknown_message_type", put(CLAIM + "message_type", "LtiFooRequest"), None, "not supported"),
    ("missing_target_link_uri", drop(CLAIM + "target_link_uri"), None, "no target_link_uri"),
    (
        "target_link_uri_elsewhere",
        put(CLAIM + "target_link_uri", "https://evil.example/lti/launch/"),
        None,
        "another host",
    ),
    ("missing_deployment_id", drop(CLAIM + "deployment_id"), None, "no deployment_id"),
    ("unknown_deployment_id", put(CLAIM + "deployment_id", "999"), None, "not registered"),
    ("wrong_version", put(CLAIM + "version", "1.1"), None, "incomplete"),
    ("missing_roles", drop(CLAIM + "roles"), None, "incomplete"),
    ("missing_resource_link", drop(CLAIM + "resource_link"), None, "incomplete"),
]


def _snapshot() -> dict[str, int]:
    models = [User, Identity, LtiUser, LtiContext, LtiDeployment, Course, Enrollment, UsedNonce]
    return {model.__name__: model.objects.count() for model in models}


@pytest.mark.parametrize(
    ("name", "mutate", "sign", "words"), FORGERIES, ids=[row[0] for row in FORGERIES]
)
def test_a_forged_launch_is_refused_and_changes_nothing(
    platform: PlatformServer,
    tool: Tool,
    caplog: pytest.LogCaptureFixture,
    name: str,
    mutate: Mutation | None,
    sign: Any,
    words: str,
) -> None:
    before = _snapshot()
    platform.state.mutate_claims, platform.state.sign = mutate, sign
    walk = launch_as(platform, tool, "u-teacher")
    assert walk.launch.status_code == 403, walk.launch.text[:300]
    assert words.lower() in html.unescape(walk.launch.text).lower(), walk.launch.text[-900:]
    assert "The tutor could not open this launch" in walk.launch.text
    assert _snapshot() == before
    assert "sessionid" not in walk.browser.cookies
    assert any(
        "LTI launch refused" in r.getMessage() and words in r.getMessage() for r in caplog.records
    )


def test_clock_skew_within_the_leeway_is_accepted(platform: PlatformServer, tool: Tool) -> None:
    platform.state.mutate_claims = shift(30, 30)
    assert launch_as(platform, tool, "u-teacher").launch.status_code == 302


def test_a_replayed_launch_is_refused_even_with_its_state_cookie(
    platform: PlatformServer, tool: Tool
) -> None:
    walk = launch_as(platform, tool, "u-teacher")
    assert walk.launch.status_code == 302
    state = walk.form["state"]
    assert f"lti1p3-{state}" not in walk.browser.cookies  # dropped by the launch
    again = walk.browser.post(tool.launch_url, data=walk.form, allow_redirects=False)
    assert again.status_code == 403 and "state does not match" in again.text
    walk.browser.cookies.set(f"lti1p3-{state}", state)
    again = walk.browser.post(tool.launch_url, data=walk.form, allow_redirects=False)
    assert again.status_code == 403 and "already used" in again.text
    stranger = requests.post(tool.launch_url, data=walk.form, allow_redirects=False)
    assert stranger.status_code == 403
    assert UsedNonce.objects.count() == 1


def test_racing_replays_let_exactly_one_launch_through(
    platform: PlatformServer, tool: Tool
) -> None:
    browser = new_browser()
    params = platform.login_initiation_params("u-teacher") | {"lti1p3_new_window": "1"}
    login = browser.post(tool.login_url, data=params, allow_redirects=False)
    form = parse_form(browser.get(login.headers["Location"]).text)
    cookies = {name: value or "" for name, value in browser.cookies.get_dict().items()}
    results: list[int] = []
    barrier = threading.Barrier(6)

    def post() -> None:
        barrier.wait()
        response = requests.post(
            str(form.action), data=form.fields, cookies=cookies, allow_redirects=False
        )
        results.append(response.status_code)

    threads = [threading.Thread(target=post) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [302, 403, 403, 403, 403, 403]
    assert UsedNonce.objects.count() == 1 and Identity.objects.count() == 1


def test_a_launch_from_a_browser_that_did_not_log_in_is_refused(
    platform: PlatformServer, tool: Tool
) -> None:
    browser = new_browser()
    params = platform.login_initiation_params("u-teacher") | {"lti1p3_new_window": "1"}
    login = browser.post(tool.login_url, data=params, allow_redirects=False)
    form = parse_form(browser.get(login.headers["Location"]).text)
    other_browser = requests.post(str(form.action), data=form.fields, allow_redirects=False)
    assert other_browser.status_code == 403 and "state" in other_browser.text
    altered = dict(form.fields, state="state-someone-elses")
    mismatch = browser.post(str(form.action), data=altered, allow_redirects=False)
    assert mismatch.status_code == 403
    assert not Identity.objects.exists()


def test_platform_keys_are_cached_and_refetched_once_for_an_unknown_kid(
    platform: PlatformServer, tool: Tool
) -> None:
    hits = platform.state.hits
    assert launch_as(platform, tool, "u-teacher").launch.status_code == 302
    assert launch_as(platform, tool, "u-teacher").launch.status_code == 302
    assert hits["/jwks"] == 1
    platform.rotate_key(keep_old=True)  # the platform signs with a new kid
    assert launch_as(platform, tool, "u-teacher").launch.status_code == 302
    assert hits["/jwks"] == 2
    platform.state.sign = sign_with_unknown_kid
    assert launch_as(platform, tool, "u-teacher").launch.status_code == 403
    assert launch_as(platform, tool, "u-teacher").launch.status_code == 403
    assert hits["/jwks"] == 2  # the refetch is rate-limited


def test_a_learner_may_not_deep_link(platform: PlatformServer, tool: Tool) -> None:
    assert launch_as(platform, tool, "u-teacher").launch.status_code == 302
    platform.state.deep_linking = True
    walk = launch_as(platform, tool, "u-learner")
    assert walk.launch.status_code == 403 and "only instructors" in walk.launch.text.lower()
    assert not Identity.objects.filter(subject="u-learner").exists()


def test_an_inactive_deployment_is_refused(platform: PlatformServer, tool: Tool) -> None:
    LtiDeployment.objects.filter(pk=tool.deployment.pk).update(is_active=False)
    walk = launch_as(platform, tool, "u-teacher")
    assert walk.launch.status_code == 403 and "not registered (or not active)" in walk.launch.text
