"""The tool's keys: published as a key set, rotated by a command, the old key kept published for
the grace period and then retired; the platform accepts what the new key signs."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
import requests
from django.core.management import call_command
from django.utils import timezone
from lti_tool.models import Key

from knowledge.models import Course, Skill
from learners.models import Attempt
from learners.services import record_attempt
from lti import tasks
from lti.models import Identity
from tests.lti.conftest import Tool, launch_as
from tests.lti.platform import PlatformServer


def _published(tool: Tool) -> set[str]:
    keys = requests.get(tool.base + "/lti/jwks/").json()["keys"]
    assert all(k["alg"] == "RS256" and k["use"] == "sig" and "d" not in k for k in keys)
    return {k["kid"] for k in keys}


def _rotate(*args: str) -> dict[str, object]:
    out = StringIO()
    call_command("rotate_lti_keys", *args, stdout=out)
    return dict(json.loads(out.getvalue()))


@pytest.mark.usefixtures("run_tasks_now")
def test_a_rotated_key_signs_at_once_and_the_old_one_stays_for_the_grace(
    platform: PlatformServer, tool: Tool
) -> None:
    [old] = _published(tool)
    new = _rotate()["new_key"]
    assert _published(tool) == {old, new}

    # The platform accepts a client assertion signed with the new key (grade passback).
    assert launch_as(platform, tool, "u-teacher").launch.status_code == 302
    skill = Skill.objects.create(course=Course.objects.get(lti_links__isnull=False), name="Seals")
    assert launch_as(platform, tool, "u-learner").launch.status_code == 302
    lena = Identity.objects.get(subject="u-learner").user
    record_attempt(learner=lena, skill=skill, correct=True, source=Attempt.Source.LTI, key="k")
    assert len(platform.state.scores) == 1

    # Within the grace period nothing is retired; after it, the old key is.
    assert _rotate("--retire-only")["retired"] == 0
    [new_key] = [key for key in Key.objects.all() if str(key) == new]
    now = timezone.now()
    Key.objects.exclude(pk=new_key.pk).update(datetime_created=now - timedelta(days=30))
    Key.objects.filter(pk=new_key.pk).update(datetime_created=now - timedelta(days=8))
    assert tasks.housekeeping()["keys_retired"] == 1
    assert _published(tool) == {new}


def test_a_rotation_without_grace_retires_at_once(tool: Tool) -> None:
    [old] = _published(tool)
    result = _rotate("--grace-days", "0")
    assert result["retired"] == 1 and _published(tool) == {result["new_key"]} != {old}
