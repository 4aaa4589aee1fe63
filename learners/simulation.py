"""Simulated learners, to train the next-item policy and to judge it against random order.

Pure maths, no ORM. Nothing here runs in the app: tests and `bench/policy.py` use it.

## The simulated learner (the truth, hidden from the tutor)

Each learner has a fixed ability theta ~ N(0, 0.75^2) on the items' IRT scale and a binary
knowledge state of the skill (BKT's), known with probability `p_known` = 0.1 at the start.
Item difficulty matters in three ways, through the item's IRT probability p(theta; a, b, c):

- guess: a learner who does not know the skill answers correctly with probability
  guess_low + (guess_high - guess_low) * p(theta): easy items are a little easier to guess
  (0.15 .. 0.25). The range is kept narrow on purpose: the tutor's BKT uses one guess rate
  for every item, so wide item-dependent guessing would let a policy reach "mastery" by
  asking easy items that non-knowers get right, which is not teaching;
- slip: a learner who knows the skill answers wrongly with probability
  slip_low + (slip_high - slip_low) * (1 - p(theta + knowing_lift)): knowing the skill lifts
  the learner's effective ability by `knowing_lift` = 1.5, and hard items still trip some up
  (0.02 .. 0.35);
- learning: each item a learner who does not know the skill works on teaches it with
  probability learn_max * exp(-((b - theta - learn_offset) / learn_width)^2 / 2), 0.4 at
  b = theta and falling off with a width of 0.75 logits: items far too hard or too easy
  teach almost nothing. There is no forgetting.

The item teaches before it is answered (the tutor's question comes with its scaffolding), so
an item that teaches also shows in the answer to it. Were learning only to follow the answer,
its effect would never show in the tracked p(L) right after the item, and a policy whose
state is p(L) alone could not tell teaching items from others in a log.

## The tutor (what the app would do)

The tutor sees only the answers. It tracks p(L) with standard BKT and one fixed set of
parameters for the skill (`TutorBKT`: p(L0) = 0.1, transit 0.1, guess 0.2, slip 0.1), and the
learner's ability by EAP over the answered items' IRT parameters (standard normal prior, 41
points on [-4, 4]). A learner is done when the tracked p(L) reaches 0.95, or after `cap`
answers. None of the last `recent_window` items asked is asked again.

An honest caveat the simulation shows: a learner who does not know the skill answers most
items wrongly whatever their difficulty, so the EAP ability of such a learner sinks, and
"maximum information at the EAP ability" then serves ever easier items, which teach little.

## Fair comparisons

Learner `i` under seed `s` draws its ability, its starting knowledge and the uniforms behind
each learning event and each answer from one stream seeded by (s, i), so every selector
meets the same learners with the same luck; only the items differ. Selectors that need
randomness get a separate stream seeded by (s, i, 1).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from learners import bkt, irt
from learners.policy import MASTERY, Candidate, QPolicy, Transition, max_information

Selector = Callable[[float, float, Collection[int | str], np.random.Generator], Candidate | None]
"""Chooses the next item from (tracked p(L), ability estimate, recent ids, rng)."""


@dataclass(frozen=True)
class TutorBKT:
    """The tutor's standard BKT for one skill."""

    p_init: float = 0.1
    p_transit: float = 0.1
    p_guess: float = 0.2
    p_slip: float = 0.1

    @cached_property
    def params(self) -> bkt.BKTParams:
        return bkt.BKTParams(
            p_l0=self.p_init, p_t=self.p_transit, p_g=self.p_guess, p_s=self.p_slip
        )

    def update(self, p: float, correct: bool) -> float:
        """p(L) after one answer: the live system's BKT update (`learners.bkt.update`)."""
        return bkt.update(p, correct, self.params)


@dataclass(frozen=True)
class LearnerModel:
    """How simulated learners answer and learn (see the module docstring)."""

    p_known: float = 0.1
    ability_sd: float = 0.75
    guess_low: float = 0.15
    guess_high: float = 0.25
    slip_low: float = 0.02
    slip_high: float = 0.35
    knowing_lift: float = 1.5
    learn_max: float = 0.4
    learn_offset: float = 0.0
    learn_width: float = 0.75

    def p_correct(self, known: bool, theta: float, item: Candidate) -> float:
        """The chance of a correct answer to `item` by a learner of ability `theta`."""
        if known:
            p = irt.probability(theta + self.knowing_lift, item.a, item.b, item.c)
            return 1.0 - (self.slip_low + (self.slip_high - self.slip_low) * (1.0 - p))
        p = irt.probability(theta, item.a, item.b, item.c)
        return self.guess_low + (self.guess_high - self.guess_low) * p

    def p_learn(self, theta: float, item: Candidate) -> float:
        """The chance that a learner who does not know the skill learns it from `item`."""
        distance = (item.b - theta - self.learn_offset) / self.learn_width
        return self.learn_max * math.exp(-0.5 * distance * distance)


@dataclass(frozen=True)
class Episode:
    """One simulated learner: answers until the tracked p(L) reached mastery (or the cap),
    whether it did, whether the learner truly knew the skill then, and the log."""

    responses: int
    reached: bool
    truly_known: bool
    transitions: tuple[Transition, ...] = ()


@dataclass(frozen=True)
class Summary:
    """Responses to mastery over many learners (capped ones count as the cap)."""

    learners: int
    mean: float
    median: float
    p90: float
    reached: float
    truly_known: float


def item_bank(
    n_items: int = 60, *, seed: int = 0, spread: float = 3.0, guessing: float = 0.0
) -> list[Candidate]:
    """A bank of items with difficulties uniform on [-spread, spread], discriminations on
    [0.7, 1.6] and lower asymptote `guessing` (0: a 2PL bank), ids 0..n_items-1."""
    rng = np.random.default_rng([seed, 2])
    b = rng.uniform(-spread, spread, n_items)
    a = rng.uniform(0.7, 1.6, n_items)
    return [Candidate(id=j, a=float(a[j]), b=float(b[j]), c=guessing) for j in range(n_items)]


def random_selector(bank: Sequence[Candidate]) -> Selector:
    """Random order: any item not asked recently, uniformly."""

    def select(
        p_mastery: float, theta: float, recent: Collection[int | str], rng: np.random.Generator
    ) -> Candidate | None:
        excluded = set(recent)
        available = [item for item in bank if item.id not in excluded]
        return available[int(rng.integers(len(available)))] if available else None

    return select


def max_information_selector(bank: Sequence[Candidate]) -> Selector:
    """The most informative item at the ability estimate, ignoring p(L)."""

    def select(
        p_mastery: float, theta: float, recent: Collection[int | str], rng: np.random.Generator
    ) -> Candidate | None:
        return max_information(bank, theta, recent=recent)

    return select


def policy_selector(policy: QPolicy, bank: Sequence[Candidate]) -> Selector:
    """The Q-learning policy's choice."""

    def select(
        p_mastery: float, theta: float, recent: Collection[int | str], rng: np.random.Generator
    ) -> Candidate | None:
        return policy.choose(p_mastery, bank, theta=theta, recent=recent)

    return select


def run_learner(
    select: Selector,
    bank: Sequence[Candidate],
    *,
    seed: int,
    index: int,
    model: LearnerModel | None = None,
    tutor: TutorBKT | None = None,
    cap: int = 200,
    recent_window: int = 10,
    log_for: QPolicy | None = None,
) -> Episode:
    """Simulate learner `index` of `seed` answering the items `select` chooses. With `log_for`,
    the episode keeps its transitions, bucketed with that policy's edges."""
    model = model or LearnerModel()
    tutor = tutor or TutorBKT()
    truth = np.random.default_rng([seed, index])
    choice_rng = np.random.default_rng([seed, index, 1])
    theta = float(truth.normal(0.0, model.ability_sd))
    known = bool(truth.random() < model.p_known)
    nodes, weights = irt.quadrature()
    log_posterior = np.log(weights)
    p = tutor.p_init
    theta_hat = 0.0
    recent: deque[int | str] = deque(maxlen=max(recent_window, 1))
    log: list[Transition] = []
    for step in range(1, cap + 1):
        item = select(p, theta_hat, recent if recent_window > 0 else (), choice_rng)
        if item is None:
            raise ValueError("the selector found no item: the bank is smaller than the window")
        u_learn, u_answer = truth.random(2)
        if not known and u_learn < model.p_learn(theta, item):
            known = True
        correct = bool(u_answer < model.p_correct(known, theta, item))
        p_after = tutor.update(p, correct)
        if log_for is not None:
            log.append(log_for.transition(p_before=p, p_after=p_after, b=item.b, correct=correct))
        p_item = np.clip(irt.probability(nodes, item.a, item.b, item.c), 1e-12, 1 - 1e-12)
        log_posterior = log_posterior + np.log(p_item if correct else 1.0 - p_item)
        posterior = np.exp(log_posterior - log_posterior.max())
        theta_hat = float(posterior @ nodes / posterior.sum())
        p = p_after
        recent.append(item.id)
        if p >= MASTERY:
            return Episode(step, True, known, tuple(log))
    return Episode(cap, False, known, tuple(log))


def simulate(
    select: Selector,
    bank: Sequence[Candidate],
    *,
    learners: int,
    seed: int,
    model: LearnerModel | None = None,
    tutor: TutorBKT | None = None,
    cap: int = 200,
    recent_window: int = 10,
    log_for: QPolicy | None = None,
) -> list[Episode]:
    """Learners 0..learners-1 of `seed`, each through `run_learner`."""
    return [
        run_learner(
            select,
            bank,
            seed=seed,
            index=index,
            model=model,
            tutor=tutor,
            cap=cap,
            recent_window=recent_window,
            log_for=log_for,
        )
        for index in range(learners)
    ]


def train_policy(
    bank: Sequence[Candidate],
    *,
    learners: int,
    seed: int,
    model: LearnerModel | None = None,
    tutor: TutorBKT | None = None,
    cap: int = 200,
    recent_window: int = 10,
    epochs: int = 200,
    learning_rate: float = 0.5,
    discount: float = 0.95,
) -> QPolicy:
    """Log `learners` learners answering in random order (the behaviour policy), then learn
    a Q-learning policy from that log alone."""
    untrained = QPolicy()
    episodes = simulate(
        random_selector(bank),
        bank,
        learners=learners,
        seed=seed,
        model=model,
        tutor=tutor,
        cap=cap,
        recent_window=recent_window,
        log_for=untrained,
    )
    return untrained.trained(
        [episode.transitions for episode in episodes],
        epochs=epochs,
        learning_rate=learning_rate,
        discount=discount,
    )


def summarise(episodes: Sequence[Episode]) -> Summary:
    """Mean, median and 90th percentile of responses to mastery, the share that reached it
    and the share that truly knew the skill when they stopped."""
    if not episodes:
        raise ValueError("no episodes to summarise")
    counts = np.array([episode.responses for episode in episodes], dtype=np.float64)
    return Summary(
        learners=len(episodes),
        mean=float(counts.mean()),
        median=float(np.median(counts)),
        p90=float(np.percentile(counts, 90)),
        reached=float(np.mean([episode.reached for episode in episodes])),
        truly_known=float(np.mean([episode.truly_known for episode in episodes])),
    )
