from __future__ import annotations

from django.apps import AppConfig


class LtiConfig(AppConfig):
    name = "lti"
    verbose_name = "Moodle (LTI 1.3)"
