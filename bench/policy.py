"""Next-item policies on simulated learners, and IRT calibration recovery.

Responses needed until the tutor's tracked p(L) reaches 0.95 (capped at 200) for three ways
of choosing items from the same bank of 60 2PL items, on the same simulated learners (same
seeds, so the same luck): random order, maximum information at the learner's EAP ability,
and the Q-learning policy trained offline on a random-order log of other simulated learners.
The learner model is documented in learners/simulation.py. "truly known" is the share of
learners who really knew the skill when the tutor stopped: a policy that reached "mastery" by
asking items that non-knowers guess would show there.

Then 2PL calibration (EM, 41 quadrature points) of 1000 simulated persons x 50 items with
known parameters: correlation of true and estimated a and b, and the time it took.

Needs no database. Run: .venv/bin/python bench/policy.py [--learners 500] [--train 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import load, log, table
from learners import irt, simulation

GOAL_RATIO = 0.9
GOAL_CORR_B = 0.95
GOAL_CORR_A = 0.8


def calibration_recovery(seed: int) -> tuple[float, float, float, int]:
    """corr(a), corr(b), seconds and EM steps for 2PL calibration at 1000 x 50."""
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal(1000)
    a = rng.uniform(0.6, 2.0, 50)
    b = rng.uniform(-2.0, 2.0, 50)
    p = 1.0 / (1.0 + np.exp(-a[None, :] * (theta[:, None] - b[None, :])))
    responses = (rng.random(p.shape) < p).astype(np.float64)
    started = time.perf_counter()
    result = irt.calibrate(responses, model="2PL")
    seconds = time.perf_counter() - started
    corr_a = float(np.corrcoef(a, [item.a for item in result.items])[0, 1])
    corr_b = float(np.corrcoef(b, [item.b for item in result.items])[0, 1])
    return corr_a, corr_b, seconds, result.iterations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learners", type=int, default=500, help="simulated learners judged")
    parser.add_argument("--train", type=int, default=2000, help="learners in the training log")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    bank = simulation.item_bank(60, seed=args.seed)
    log(f"training on a random-order log of {args.train} learners; {load()}")
    started = time.perf_counter()
    policy = simulation.train_policy(bank, learners=args.train, seed=args.seed + 1)
    train_seconds = time.perf_counter() - started
    transitions = sum(sum(row) for row in policy.visits)

    selectors = [
        ("random order", simulation.random_selector(bank)),
        ("max information", simulation.max_information_selector(bank)),
        ("Q-learning policy", simulation.policy_selector(policy, bank)),
    ]
    summaries = {}
    for name, select in selectors:
        log(f"simulating {args.learners} learners: {name}")
        episodes = simulation.simulate(select, bank, learners=args.learners, seed=args.seed + 2)
        summaries[name] = simulation.summarise(episodes)
    baseline = summaries["random order"].mean

    log("calibrating 2PL at 1000 x 50")
    corr_a, corr_b, calibration_seconds, steps = calibration_recovery(args.seed + 3)

    rows = [
        [
            name,
            str(summary.learners),
            f"{summary.mean:.2f}",
            f"{summary.median:.1f}",
            f"{summary.p90:.1f}",
            f"{summary.reached:.1%}",
            f"{summary.truly_known:.1%}",
            f"{summary.mean / baseline:.3f}",
        ]
        for name, summary in summaries.items()
    ]
    print(
        table(
            [
                "items chosen by",
                "learners",
                "mean",
                "median",
                "p90",
                "reached",
                "truly known",
                "/ random",
            ],
            rows,
            [False, True, True, True, True, True, True, True],
        )
    )
    ratio = summaries["Q-learning policy"].mean / baseline
    passed = ratio <= GOAL_RATIO and corr_b >= GOAL_CORR_B and corr_a >= GOAL_CORR_A
    print(
        f"\nSUMMARY policy: Q-learning / random = {ratio:.3f} responses to p(L) >= 0.95 "
        f"(goal <= {GOAL_RATIO}; max information / random = "
        f"{summaries['max information'].mean / baseline:.3f}; trained on {transitions} logged "
        f"answers in {train_seconds:.2f} s); IRT 2PL 1000 x 50: corr(b) = {corr_b:.3f}, "
        f"corr(a) = {corr_a:.3f}, calibrated in {calibration_seconds:.2f} s ({steps} EM steps) "
        f"(goals >= {GOAL_CORR_B}, >= {GOAL_CORR_A}); {load()}: "
        f"{'PASS' if passed else 'FAIL'}"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
