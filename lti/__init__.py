"""The door from Moodle (LTI 1.3): OIDC login, launch, key set, grade passback (AGS), rosters
(NRPS) and deep linking, on django-lti and pylti1p3.

How a launch flows and where each security check lives: see the docstring of `lti.launch`.
Writes go through `lti.services`; calls to the platform through `lti.platform`; the signing
keys through `lti.keys`; framing rules in `lti.middleware`.
"""
