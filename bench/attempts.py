"""Benchmark: `learners.services.record_attempt` latency, database round trip included.

Records attempts for many learners and skills as the live system does (one transaction each:
insert the attempt, lock and update the mastery row) and reports p50/p95/p99. Goal: p95 <= 5 ms.

    python bench/attempts.py [--attempts 3000] [--database tutor_bench]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import load, log, percentile, setup_django, table

GOAL_P95_MS = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--attempts", type=int, default=3000)
    parser.add_argument("--learners", type=int, default=50)
    parser.add_argument("--skills", type=int, default=10)
    parser.add_argument("--database", default="tutor_bench")
    args = parser.parse_args()
    setup_django(args.database)

    import numpy as np
    from django.contrib.auth.models import User

    from knowledge.models import Course, Skill
    from learners import services
    from learners.models import Attempt

    course, _ = Course.objects.get_or_create(slug="bench-attempts", defaults={"title": "Bench"})
    skills = [
        Skill.objects.get_or_create(course=course, name=f"skill {n}")[0] for n in range(args.skills)
    ]
    learners = [
        User.objects.get_or_create(username=f"bench-learner-{n}")[0] for n in range(args.learners)
    ]
    run = time.strftime("%Y%m%d%H%M%S")
    rng = np.random.default_rng(0)
    log(f"recording {args.attempts} attempts")
    for n in range(50):  # warm the connection and the code paths
        services.record_attempt(
            learner=learners[0], skill=skills[0], correct=True, source="api", key=f"warm-{run}-{n}"
        )
    timings: list[float] = []
    repeats: list[float] = []
    for n in range(args.attempts):
        learner = learners[int(rng.integers(len(learners)))]
        skill = skills[int(rng.integers(len(skills)))]
        key = f"{run}-{n}"
        started = time.perf_counter()
        services.record_attempt(
            learner=learner, skill=skill, correct=bool(rng.random() < 0.7), source="api", key=key
        )
        timings.append((time.perf_counter() - started) * 1000)
        if n % 10 == 0:  # a resend of the same key: returns the first result
            started = time.perf_counter()
            services.record_attempt(
                learner=learner, skill=skill, correct=True, source="api", key=key
            )
            repeats.append((time.perf_counter() - started) * 1000)
    rows = [
        [
            name,
            str(len(values)),
            f"{percentile(values, 50):.2f}",
            f"{percentile(values, 95):.2f}",
            f"{percentile(values, 99):.2f}",
        ]
        for name, values in (("new attempt", timings), ("repeated key", repeats))
    ]
    print(
        table(
            ["record_attempt", "calls", "p50 ms", "p95 ms", "p99 ms"],
            rows,
            [False, True, True, True, True],
        )
    )
    p95 = percentile(timings, 95)
    verdict = "PASS" if p95 <= GOAL_P95_MS else "FAIL"
    total = Attempt.objects.filter(skill__course=course).count()
    print(
        f"SUMMARY attempts: record_attempt p95 {p95:.2f} ms (goal <= {GOAL_P95_MS:.0f} ms), "
        f"{total} attempts in the course; {load()}: {verdict}"
    )


if __name__ == "__main__":
    main()
