"""The next item for a learner and a skill: tabular Q-learning, learned offline from logs.

Pure maths, no ORM. The policy sees two things about a learner:

- the state: the learner's mastery p(L) of the skill, cut into buckets (by default five:
  below 0.25, 0.25-0.5, 0.5-0.75, 0.75-0.9, 0.9 and above);
- the action: a difficulty band for the next item, by its IRT difficulty b (by default
  five: below -1.5, -1.5 to -0.5, -0.5 to 0.5, 0.5 to 1.5, 1.5 and above).

The bands are absolute, not relative to the learner's ability: a learner who does not know the
skill yet answers most items wrongly, so an EAP ability says little about where such a learner
learns best (learners/simulation.py shows "maximum information at the EAP ability" drifting to
ever easier items). The learner's ability still picks the item within the band.

Learning is offline: the app logs, per learner and skill, one `Transition` per answered item
(bucket before, band asked, correct, bucket after, reward, whether mastery was reached) and
`train` runs epochs of batch Q-learning over the log: each epoch moves every Q[s, a] by
`learning_rate` towards the average over its logged transitions of

    r + gamma * max_a' Q[s', a']        (just r when the transition reached mastery).

The max runs over the bands tried in s' only: a band never tried there has no estimate, not
an estimate of 0.

The reward (`reward`) is the gain in p(L), plus a bonus when p(L) reaches mastery (0.95), minus
a small cost per question (0.02): the policy learns to reach mastery in few questions.

Choosing (`QPolicy.choose`): among the bands that hold a candidate and have been tried in the
learner's state, take the highest Q (ties go to the band whose best item is more
informative), then the most informative item in that band at the learner's ability. In a
state the log never visited, fall back to the most informative item overall. Items in
`recent` are never returned.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

MASTERY = 0.95
DEFAULT_MASTERY_EDGES: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9)
DEFAULT_BAND_EDGES: tuple[float, ...] = (-1.5, -0.5, 0.5, 1.5)
FORMAT = "q-learning/1"


@dataclass(frozen=True)
class Candidate:
    """An item that could be asked: its id and its IRT parameters (a, b, c)."""

    id: int | str
    a: float = 1.0
    b: float = 0.0
    c: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.a) and math.isfinite(self.b) and math.isfinite(self.c)):
            raise ValueError(f"item parameters must be finite, got {self}")
        if self.a <= 0 or not 0 <= self.c < 1:
            raise ValueError(f"need a > 0 and 0 <= c < 1, got {self}")

    def information(self, theta: float) -> float:
        """Fisher information at `theta`, the closed form of `learners.irt.information`."""
        s = 1.0 / (1.0 + math.exp(-max(min(self.a * (theta - self.b), 700.0), -700.0)))
        p = self.c + (1.0 - self.c) * s
        return self.a * self.a * s * s * (1.0 - self.c) * (1.0 - s) / max(p, 1e-300)


@dataclass(frozen=True)
class Transition:
    """One logged answer: mastery bucket before, band of the item asked, whether it was
    answered correctly, bucket after, the reward, and whether mastery was reached (the
    episode ends there)."""

    state: int
    band: int
    correct: bool
    next_state: int
    reward: float
    done: bool


def reward(
    p_before: float,
    p_after: float,
    *,
    mastery: float = MASTERY,
    bonus: float = 1.0,
    cost: float = 0.02,
) -> float:
    """The gain in p(L), plus `bonus` when p(L) reaches `mastery`, minus `cost` per question."""
    return (p_after - p_before) + (bonus if p_after >= mastery else 0.0) - cost


def _available(candidates: Sequence[Candidate], recent: Collection[int | str]) -> list[Candidate]:
    excluded = set(recent)
    return [candidate for candidate in candidates if candidate.id not in excluded]


def _most_informative(candidates: Sequence[Candidate], theta: float) -> Candidate | None:
    """The first candidate with the highest information at theta (stable on ties)."""
    best: Candidate | None = None
    best_information = -math.inf
    for candidate in candidates:
        information = candidate.information(theta)
        if information > best_information:
            best, best_information = candidate, information
    return best


def max_information(
    candidates: Sequence[Candidate],
    theta: float | None = None,
    *,
    recent: Collection[int | str] = (),
) -> Candidate | None:
    """The candidate (not in `recent`) most informative at `theta` (0 when unknown), or None
    when every candidate is excluded. Ties go to the earlier candidate."""
    return _most_informative(_available(candidates, recent), _ability(theta))


def _ability(theta: float | None) -> float:
    if theta is None:
        return 0.0
    if not math.isfinite(theta):
        raise ValueError(f"theta must be a finite number, got {theta}")
    return float(theta)


def _check_edges(name: str, edges: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(edge) for edge in edges)
    if not all(math.isfinite(value) for value in values):
        raise ValueError(f"{name} must be finite numbers")
    if any(lower >= upper for lower, upper in itertools.pairwise(values)):
        raise ValueError(f"{name} must increase strictly, got {values}")
    return values


@dataclass(frozen=True)
class QPolicy:
    """A Q table over (mastery bucket, difficulty band), with visit counts from the log.

    `q[s][a]` is the expected discounted reward of asking an item of band `a` in state `s`
    and following the policy afterwards; `visits[s][a]` counts the logged transitions behind
    it. Immutable: `trained` returns a new policy.
    """

    mastery_edges: tuple[float, ...] = DEFAULT_MASTERY_EDGES
    band_edges: tuple[float, ...] = DEFAULT_BAND_EDGES
    q: tuple[tuple[float, ...], ...] = ()
    visits: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "mastery_edges", _check_edges("mastery_edges", self.mastery_edges))
        object.__setattr__(self, "band_edges", _check_edges("band_edges", self.band_edges))
        shape = (len(self.mastery_edges) + 1, len(self.band_edges) + 1)
        if not self.q and not self.visits:
            object.__setattr__(self, "q", tuple((0.0,) * shape[1] for _ in range(shape[0])))
            object.__setattr__(self, "visits", tuple((0,) * shape[1] for _ in range(shape[0])))
        # Tuples all the way down, whatever sequences came in: equality and hashing hold.
        object.__setattr__(self, "q", tuple(tuple(float(v) for v in row) for row in self.q))
        object.__setattr__(self, "visits", tuple(tuple(row) for row in self.visits))
        for name, table in (("q", self.q), ("visits", self.visits)):
            if len(table) != shape[0] or any(len(row) != shape[1] for row in table):
                raise ValueError(f"{name} must be {shape[0]} rows of {shape[1]} values")
        if not all(math.isfinite(value) for row in self.q for value in row):
            raise ValueError("q values must be finite")
        if not all(isinstance(n, int) and n >= 0 for row in self.visits for n in row):
            raise ValueError("visits must be non-negative integers")

    @property
    def n_states(self) -> int:
        return len(self.mastery_edges) + 1

    @property
    def n_bands(self) -> int:
        return len(self.band_edges) + 1

    def state_of(self, p_mastery: float) -> int:
        """The mastery bucket of p(L): edges belong to the bucket above them."""
        if not 0.0 <= p_mastery <= 1.0:
            raise ValueError(f"p(L) must be in [0, 1], got {p_mastery}")
        return bisect.bisect_right(self.mastery_edges, p_mastery)

    def band_of(self, b: float) -> int:
        """The difficulty band of an item of IRT difficulty `b`: edges belong to the band
        above them."""
        return bisect.bisect_right(self.band_edges, b)

    def is_trained(self, state: int, *, min_visits: int = 1) -> bool:
        """Whether the log tried at least one band in `state` `min_visits` times."""
        return any(n >= min_visits for n in self.visits[state])

    def transition(
        self,
        *,
        p_before: float,
        p_after: float,
        b: float,
        correct: bool,
        mastery: float = MASTERY,
    ) -> Transition:
        """The log entry for one answer, bucketed with this policy's edges: p(L) before and
        after the answer and the item's difficulty `b`."""
        return Transition(
            state=self.state_of(p_before),
            band=self.band_of(b),
            correct=bool(correct),
            next_state=self.state_of(p_after),
            reward=reward(p_before, p_after, mastery=mastery),
            done=p_after >= mastery,
        )

    def trained(
        self,
        episodes: Sequence[Sequence[Transition]],
        *,
        epochs: int = 200,
        learning_rate: float = 0.5,
        discount: float = 0.95,
    ) -> QPolicy:
        """A new policy: this table after `epochs` epochs of batch Q-learning over `episodes`
        (one sequence of transitions per learner and skill).

        Each epoch applies, to every (state, band) in the log, the average of the Q-learning
        updates of its transitions,

            Q[s, a] += learning_rate * (mean(r + discount * max_a' Q[s', a']) - Q[s, a]),

        with no bootstrap after a transition that reached mastery, and the max over the bands
        tried in s'. Averaging the whole epoch instead of updating one transition at a time
        makes the result independent of the order of the log and lets its noise shrink as the
        log grows: one-at-a-time updates with a fixed rate keep following the last few
        transitions, and the differences between bands are small (a few hundredths).
        """
        if epochs < 1 or not 0 < learning_rate <= 1 or not 0 <= discount <= 1:
            raise ValueError("need epochs >= 1, 0 < learning_rate <= 1, 0 <= discount <= 1")
        n_states, n_bands = self.n_states, self.n_bands
        visits = [list(row) for row in self.visits]
        count = [[0] * n_bands for _ in range(n_states)]
        reward_sum = [[0.0] * n_bands for _ in range(n_states)]
        # onward[s][a][s2]: transitions from (s, a) that went on (did not reach mastery) to s2.
        onward = [[[0] * n_states for _ in range(n_bands)] for _ in range(n_states)]
        for episode in episodes:
            for t in episode:
                if not (0 <= t.state < n_states and 0 <= t.next_state < n_states):
                    raise ValueError(f"state out of range in {t}")
                if not 0 <= t.band < n_bands:
                    raise ValueError(f"band out of range in {t}")
                if not math.isfinite(t.reward):
                    raise ValueError(f"reward must be finite in {t}")
                visits[t.state][t.band] += 1
                count[t.state][t.band] += 1
                reward_sum[t.state][t.band] += t.reward
                if not t.done:
                    onward[t.state][t.band][t.next_state] += 1
        tried = [[a for a in range(n_bands) if visits[s][a] > 0] for s in range(n_states)]
        seen = [(s, a) for s in range(n_states) for a in range(n_bands) if count[s][a] > 0]
        q = [list(row) for row in self.q]
        for _ in range(epochs):
            value = [max((q[s][a] for a in tried[s]), default=0.0) for s in range(n_states)]
            targets = [
                (
                    reward_sum[s][a]
                    + discount * sum(n * value[s2] for s2, n in enumerate(onward[s][a]))
                )
                / count[s][a]
                for s, a in seen
            ]
            for (s, a), target in zip(seen, targets, strict=True):
                q[s][a] += learning_rate * (target - q[s][a])
        return QPolicy(
            mastery_edges=self.mastery_edges,
            band_edges=self.band_edges,
            q=tuple(tuple(row) for row in q),
            visits=tuple(tuple(row) for row in visits),
        )

    def choose(
        self,
        p_mastery: float,
        candidates: Sequence[Candidate],
        *,
        theta: float | None = None,
        recent: Collection[int | str] = (),
        min_visits: int = 1,
    ) -> Candidate | None:
        """The next item for a learner with mastery `p_mastery` and ability `theta` (0 when
        unknown), never one in `recent`; None when every candidate is excluded.

        The band with the highest Q among those tried at least `min_visits` times in the
        learner's state and holding a candidate (ties: the more informative best item), then
        the most informative item in it; in an untried state, the most informative item.
        """
        at = _ability(theta)
        available = _available(candidates, recent)
        state = self.state_of(p_mastery)
        by_band: dict[int, list[Candidate]] = {}
        for candidate in available:
            by_band.setdefault(self.band_of(candidate.b), []).append(candidate)
        best: Candidate | None = None
        best_key = (-math.inf, -math.inf)
        for band, members in sorted(by_band.items()):
            if self.visits[state][band] < min_visits:
                continue
            top = _most_informative(members, at)
            if top is None:  # pragma: no cover - every band in by_band has a member
                continue
            key = (self.q[state][band], top.information(at))
            if key > best_key:
                best, best_key = top, key
        return best if best is not None else _most_informative(available, at)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; `from_dict` reads it back to an equal policy."""
        return {
            "format": FORMAT,
            "mastery_edges": list(self.mastery_edges),
            "band_edges": list(self.band_edges),
            "q": [list(row) for row in self.q],
            "visits": [list(row) for row in self.visits],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QPolicy:
        """The policy `to_dict` wrote; ValueError on anything else."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a stored policy (expected format {FORMAT!r})")
        try:
            return cls(
                mastery_edges=tuple(float(edge) for edge in data["mastery_edges"]),
                band_edges=tuple(float(edge) for edge in data["band_edges"]),
                q=tuple(tuple(float(value) for value in row) for row in data["q"]),
                visits=tuple(tuple(_count(value) for value in row) for row in data["visits"]),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"malformed stored policy: {error!r}") from error


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"visit counts must be integers, got {value!r}")
    return value


def train(
    episodes: Sequence[Sequence[Transition]],
    *,
    mastery_edges: Sequence[float] = DEFAULT_MASTERY_EDGES,
    band_edges: Sequence[float] = DEFAULT_BAND_EDGES,
    epochs: int = 200,
    learning_rate: float = 0.5,
    discount: float = 0.95,
) -> QPolicy:
    """A policy learned from scratch from `episodes` (see `QPolicy.trained`)."""
    return QPolicy(mastery_edges=tuple(mastery_edges), band_edges=tuple(band_edges)).trained(
        episodes, epochs=epochs, learning_rate=learning_rate, discount=discount
    )
