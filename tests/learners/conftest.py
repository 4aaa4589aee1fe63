from __future__ import annotations

import pytest

from knowledge.models import Course, Skill


@pytest.fixture
def skill(course: Course) -> Skill:
    basics = Skill.objects.create(course=course, name="Pump basics", description="Parts of a pump")
    seals = Skill.objects.create(course=course, name="Seals", description="Mechanical seals")
    seals.prerequisites.add(basics)
    return seals
