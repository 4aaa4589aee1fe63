"""The next-item policy: Q-learning over mastery buckets and difficulty bands, learned offline."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learners import irt, simulation
from learners.policy import Candidate, QPolicy, Transition, max_information, reward, train

BANK = [Candidate(id=f"q{j}", a=1.0, b=b) for j, b in enumerate([-2.0, -1.0, -0.2, 0.4, 1.1, 2.3])]


def _log() -> list[list[Transition]]:
    """A hand-made log: from the lowest bucket, band 3 (b in [0.5, 1.5)) led to mastery in
    two steps; every other band went nowhere."""
    policy = QPolicy()
    good = [
        policy.transition(p_before=0.1, p_after=0.6, b=1.0, correct=True),
        policy.transition(p_before=0.6, p_after=0.96, b=1.0, correct=True),
    ]
    stuck = [
        policy.transition(p_before=0.1, p_after=0.11, b=b, correct=False)
        for b in (-2.0, -1.0, 0.0, 2.0)
    ]
    return [good, stuck, good]


def test_it_falls_back_to_maximum_information_when_untrained() -> None:
    policy = QPolicy()
    assert not policy.is_trained(policy.state_of(0.3))
    # 2PL with equal a: the most informative item is the one whose b is closest to theta.
    assert policy.choose(0.3, BANK, theta=0.7) == BANK[3]
    assert policy.choose(0.3, BANK, theta=1.0) == BANK[4]
    assert policy.choose(0.3, BANK, theta=-1.4) == BANK[1]
    # No ability yet: theta is the prior mean, 0.
    assert policy.choose(0.3, BANK) == BANK[2]
    assert max_information(BANK, 0.7) == BANK[3]


@settings(max_examples=150, deadline=None)
@given(
    theta=st.floats(-3, 3),
    bs=st.lists(st.floats(-4, 4), min_size=1, max_size=12, unique=True),
)
def test_it_picks_the_closest_difficulty_when_untrained(theta: float, bs: list[float]) -> None:
    candidates = [Candidate(id=j, a=1.3, b=b) for j, b in enumerate(bs)]
    chosen = QPolicy().choose(0.5, candidates, theta=theta)
    assert chosen is not None
    closest = min(abs(b - theta) for b in bs)
    # Information falls with the square of the distance near theta: two difficulties within
    # ~1e-7 of each other are equally informative in floating point, and either may win.
    assert abs(chosen.b - theta) == pytest.approx(closest, abs=1e-6)


def test_it_follows_the_learned_q_table() -> None:
    policy = train(_log())
    state = policy.state_of(0.1)
    assert policy.is_trained(state)
    assert max(range(policy.n_bands), key=lambda band: policy.q[state][band]) == 3
    # Band 3 holds b = 1.1 only; it is chosen although b = -0.2 is more informative at 0.
    assert policy.choose(0.1, BANK, theta=0.0) == BANK[4]
    # Band 3's item excluded: the other bands tie, so the most informative item wins.
    assert policy.choose(0.1, BANK, theta=0.0, recent=["q4"]) == BANK[2]
    # A state the log never reached: maximum information.
    assert not policy.is_trained(policy.state_of(0.8))
    assert policy.choose(0.8, BANK, theta=0.0) == BANK[2]


def test_it_breaks_ties_by_information() -> None:
    q = [[0.0] * 5 for _ in range(5)]
    q[0][1] = q[0][3] = 1.0  # bands [-1.5, -0.5) and [0.5, 1.5) tie
    visits = [[1] * 5 for _ in range(5)]
    policy = QPolicy(q=tuple(map(tuple, q)), visits=tuple(map(tuple, visits)))
    # At theta = 0.8 the item b = 1.1 (band 3) is more informative than b = -1.0 (band 1).
    assert policy.choose(0.1, BANK, theta=0.8) == BANK[4]
    assert policy.choose(0.1, BANK, theta=-1.2) == BANK[1]


def test_it_round_trips_through_json() -> None:
    policy = train(_log())
    stored = json.loads(json.dumps(policy.to_dict()))
    again = QPolicy.from_dict(stored)
    assert again == policy
    for p in (0.05, 0.3, 0.6, 0.8, 0.93):
        assert again.choose(p, BANK, theta=0.4) == policy.choose(p, BANK, theta=0.4)
    with pytest.raises(ValueError, match="format"):
        QPolicy.from_dict({"q": []})
    broken = policy.to_dict()
    broken["q"] = broken["q"][:-1]
    with pytest.raises(ValueError, match="rows"):
        QPolicy.from_dict(broken)
    broken = policy.to_dict()
    broken["visits"][0][0] = 1.5
    with pytest.raises(ValueError, match="integers"):
        QPolicy.from_dict(broken)


def test_it_rejects_nonsense() -> None:
    policy = QPolicy()
    with pytest.raises(ValueError, match="p"):
        policy.choose(1.5, BANK)
    with pytest.raises(ValueError, match="theta"):
        policy.choose(0.5, BANK, theta=float("nan"))
    with pytest.raises(ValueError, match="increase"):
        QPolicy(band_edges=(1.0, 0.0))
    with pytest.raises(ValueError, match="band out of range"):
        policy.trained([[Transition(0, 9, True, 1, 0.1, False)]])
    with pytest.raises(ValueError, match="c <"):
        Candidate(id=1, c=1.0)


@settings(max_examples=150, deadline=None)
@given(
    p=st.floats(0, 1),
    theta=st.one_of(st.none(), st.floats(-4, 4)),
    recent=st.sets(st.sampled_from([c.id for c in BANK])),
    trained=st.booleans(),
)
def test_it_never_returns_an_excluded_item(
    p: float, theta: float | None, recent: set[str], trained: bool
) -> None:
    policy = train(_log()) if trained else QPolicy()
    chosen = policy.choose(p, BANK, theta=theta, recent=recent)
    if len(recent) == len(BANK):
        assert chosen is None
    else:
        assert chosen is not None
        assert chosen.id not in recent


def test_it_defines_the_reward_and_the_bkt_the_simulation_tracks() -> None:
    assert reward(0.2, 0.5) == pytest.approx(0.3 - 0.02)
    assert reward(0.9, 0.96) == pytest.approx(0.06 + 1.0 - 0.02)
    tutor = simulation.TutorBKT(p_init=0.1, p_transit=0.1, p_guess=0.2, p_slip=0.1)
    # correct: 0.09 / (0.09 + 0.18) = 1/3, then 1/3 + 2/3 * 0.1 = 0.4
    assert tutor.update(0.1, True) == pytest.approx(0.4)
    # incorrect: 0.01 / (0.01 + 0.72), then + (1 - that) * 0.1
    posterior = 0.01 / 0.73
    assert tutor.update(0.1, False) == pytest.approx(posterior + (1 - posterior) * 0.1)
    assert Candidate(id=1, a=1.4, b=0.3, c=0.2).information(0.9) == pytest.approx(
        irt.information(0.9, 1.4, 0.3, 0.2)
    )


def test_it_needs_fewer_responses_than_random_order() -> None:
    bank = simulation.item_bank(60, seed=0)
    # Learned from a random-order log of other learners (seed 1), judged on fresh ones (seed 2).
    policy = simulation.train_policy(bank, learners=2000, seed=1)
    learned = simulation.summarise(
        simulation.simulate(simulation.policy_selector(policy, bank), bank, learners=1000, seed=2)
    )
    random = simulation.summarise(
        simulation.simulate(simulation.random_selector(bank), bank, learners=1000, seed=2)
    )
    ratio = learned.mean / random.mean
    print(f"responses to p(L) >= 0.95: policy {learned.mean:.2f}, random {random.mean:.2f}")
    print(f"ratio {ratio:.3f}")
    assert ratio <= 0.9
    assert learned.median <= random.median
    # Not by asking easy items that non-knowers guess: as many truly know the skill at the end.
    assert learned.truly_known >= random.truly_known - 0.02
    assert learned.reached == 1.0
