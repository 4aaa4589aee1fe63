"""Bayesian Knowledge Tracing: one learner's mastery of one skill, and fitting its parameters.

Pure maths on floats and numpy arrays, no ORM. The live system keeps each learner's mastery
of a skill as log-odds: `to_logit(params.p_l0)` to start, `predict_correct_logit` before an
answer, `update_logit` after it, `from_logit` for p(L). `kt_data` scores models exactly that
way; `fit_skills` fits them.

## The model

A learner either knows the skill (L) or not. Five parameters per skill (`BKTParams`):

- p_l0 "prior": p(L) before the first answer;
- p_t "learn": p(not L -> L) after each answer (a practice opportunity);
- p_g "guess": p(correct | not L);
- p_s "slip": p(incorrect | L);
- p_f "forget": p(L -> not L) after each answer, 0 in standard BKT.

For a learner with mastery p = p(L) before an answer:

    p(correct)                 = p (1 - s) + (1 - p) g
    posterior after correct    = p (1 - s) / (p (1 - s) + (1 - p) g)
    posterior after incorrect  = p s / (p s + (1 - p) (1 - g))
    new p(L)                   = post (1 - f) + (1 - post) t

`update(p, correct, params)` is the posterior followed by the transition. An answer the
model calls impossible (a correct one when p = 0 and g = 0, a wrong one when p = 1 and
s = 0) leaves the posterior at p. `BKTParams` requires guess + slip < 1 (knowing the skill
makes a correct answer likelier) and learn + forget <= 1 (knowing it now makes knowing it
after the next answer likelier): together they make sure a correct answer never leaves a
learner with lower mastery than a wrong one would.

`update_logit` is the same update on x = log(p / (1 - p)). It exists because p(L) in
float64 cannot get closer to 1 than 1.1e-16: after a few dozen correct answers in a row
(without forgetting) `update` returns exactly 1.0, and from then on no wrong answer can lower
it, while the model only believes the learner knows the skill by a margin that later wrong
answers wear down. On ASSISTments 2009, scoring with p(L) that saturates costs 0.013 AUC
against pyBKT, which keeps both p(L) and 1 - p(L); the log-odds hold that margin for any
history.

## Fitting (EM, Baum-Welch)

`fit_skills` fits one model per skill by expectation-maximisation over each learner's
sequence of answers on that skill, from several random starting points ("restarts"; the
highest log-likelihood wins, the first on ties). The starting points are drawn as pyBKT
draws them: p_l0 ~ U(0, 1), p_t ~ U(0, 0.4), p_g ~ U(0, 0.4), p_s ~ U(0, 0.3) and, with
forgets, p_f ~ U(0, 1); the restarts of the `k`-th skill (in the order given) draw from
`numpy.random.default_rng([seed, k])`, so results depend only on the data, its order and
the seed. A restart stops when its log-likelihood (natural log, summed over answers) rises
by less than `tol` from one iteration to the next, after at least `min_iter` iterations, or
after `max_iter`. The defaults (20 restarts, tol 1, at most 100 iterations) match pyBKT's
effort: pyBKT stops when the integer part of its log-likelihood stops changing. With `prune`
(the default) a restart is abandoned once it trails the best restart of its skill by more
than it would gain by `max_iter` at its current pace; on ASSISTments 2009 that changes no
fit and saves about 15% of the time with forgets.

Bounds, applied after every M-step (each parameter's part of the expected complete
log-likelihood is concave, so clipping it gives the constrained maximum and EM stays
monotone):

- every probability in [1e-6, 1 - 1e-6] (`FitBounds.eps`): no parameter is exactly 0 or 1,
  so no message is ever 0/0 and degenerate data (one learner, all correct or all wrong)
  gives valid numbers, never NaN;
- guess and slip at most 0.5 - 1e-6 (`FitBounds.max_guess`, `max_slip`): guess + slip < 1,
  which rules out the label-switched solution where "knowing" means answering worse;
- learn + forget <= 1: where the free M-step breaks it, the constrained maximum on
  learn + forget = 1 is in closed form;
- without forgets, p_f is exactly 0.

pyBKT bounds nothing: on ASSISTments 2009 a handful of its skills get guess > 0.5 or
learn + forget > 1; with the bounds, test AUC and RMSE stay within 0.001 of pyBKT's.

## How it is fast in numpy

The loop over positions in a sequence has to be Python; everything else is vectorised.

- Many skills and all their restarts run together: the arrays hold one element per
  (restart, prefix-tree node), level by level, so each step of the loop serves them all.
  Skills are grouped, deepest first, into batches of `batch_size` elements, which bounds
  memory (about 130 bytes an element, 170 with forgets).
- Learners' sequences of a skill are merged into a prefix tree: learners who answered the
  same way so far share one forward message (ASSISTments 2009: 408k answers, 176k nodes).
  The backward pass runs over the tree too: the smoothed state counts of all learners
  through a node are linear in their children's counts, so they add up.
- Forward messages are normalised and keep both p(L) and p(not L), so neither loses
  precision and nothing underflows; the smoothing is the forward-filter backward-smoother
  form, whose factors are probabilities, so it needs no scaling and no logs.
- A restart that has converged leaves its batch; the arrays are compacted when a third of
  their elements are dead, and the loop only runs as deep as the deepest live skill.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

K = TypeVar("K", bound=Hashable)

#: Fitting defaults: 20 restarts and at most 100 iterations, as pyBKT.
DEFAULT_RESTARTS = 20
DEFAULT_MAX_ITER = 100
#: Stop a restart when its log-likelihood (natural log, summed over answers) rises by less.
DEFAULT_TOL = 1.0
DEFAULT_MIN_ITER = 3
#: Skills are fitted in groups of about this many elements (prefix-tree nodes x restarts),
#: about 130 bytes each (170 with forgets).
DEFAULT_BATCH_SIZE = 1_000_000
#: Smallest distance of a fitted probability from 0 and 1.
EPS = 1e-6


@dataclass(frozen=True, slots=True)
class BKTParams:
    """The five BKT parameters of one skill; the defaults are a generic skill with no data."""

    p_l0: float = 0.1
    p_t: float = 0.1
    p_g: float = 0.2
    p_s: float = 0.1
    p_f: float = 0.0

    def __post_init__(self) -> None:
        for name in ("p_l0", "p_t", "p_g", "p_s", "p_f"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        if self.p_g + self.p_s >= 1.0:
            raise ValueError(
                f"guess + slip must be below 1 (got {self.p_g} + {self.p_s}): otherwise "
                "knowing the skill does not make a correct answer likelier"
            )
        if self.p_t > 1.0 - self.p_f:  # (not p_t + p_f > 1: exact where the sum rounds)
            raise ValueError(
                f"learn + forget must be at most 1 (got {self.p_t} + {self.p_f}): otherwise "
                "knowing the skill now makes knowing it after the next answer less likely"
            )

    def as_dict(self) -> dict[str, float]:
        return {
            "p_l0": self.p_l0,
            "p_t": self.p_t,
            "p_g": self.p_g,
            "p_s": self.p_s,
            "p_f": self.p_f,
        }


@dataclass(frozen=True, slots=True)
class ParamArrays:
    """Many `BKTParams` as columns, for the vectorised functions (one entry per element)."""

    p_l0: FloatArray
    p_t: FloatArray
    p_g: FloatArray
    p_s: FloatArray
    p_f: FloatArray

    @classmethod
    def of(cls, params: Sequence[BKTParams]) -> ParamArrays:
        table = np.array(
            [(p.p_l0, p.p_t, p.p_g, p.p_s, p.p_f) for p in params], dtype=np.float64
        ).reshape(-1, 5)
        return cls(*(np.ascontiguousarray(table[:, i]) for i in range(5)))

    def take(self, index: IntArray | slice) -> ParamArrays:
        return ParamArrays(
            self.p_l0[index], self.p_t[index], self.p_g[index], self.p_s[index], self.p_f[index]
        )


# --- One learner, one answer (the live system) ------------------------------------------------


def predict_correct(p: float, params: BKTParams) -> float:
    """p(correct) of the next answer for a learner with mastery p; in [g, 1 - s]."""
    return p * (1.0 - params.p_s) + (1.0 - p) * params.p_g


def posterior(p: float, correct: bool, params: BKTParams) -> float:
    """p(L) given one more answer, before the learning transition."""
    if correct:
        num = p * (1.0 - params.p_s)
        den = num + (1.0 - p) * params.p_g
    else:
        num = p * params.p_s
        den = num + (1.0 - p) * (1.0 - params.p_g)
    return num / den if den > 0.0 else p


def transition(p: float, params: BKTParams) -> float:
    """p(L) after a practice opportunity: learn with p_t, forget with p_f."""
    return p * (1.0 - params.p_f) + (1.0 - p) * params.p_t


def update(p: float, correct: bool, params: BKTParams) -> float:
    """The new p(L) after an answer: the posterior, then the learning transition."""
    return transition(posterior(p, correct, params), params)


# --- Vectorised: the same arithmetic, in the same order, element by element --------------------


def predict_correct_array(p: npt.ArrayLike, params: BKTParams | ParamArrays) -> FloatArray:
    pa = np.asarray(p, dtype=np.float64)
    return np.asarray(pa * (1.0 - params.p_s) + (1.0 - pa) * params.p_g, dtype=np.float64)


def posterior_array(
    p: npt.ArrayLike, correct: npt.ArrayLike, params: BKTParams | ParamArrays
) -> FloatArray:
    pa = np.asarray(p, dtype=np.float64)
    right = np.asarray(correct).astype(bool)
    num = np.where(right, pa * (1.0 - params.p_s), pa * params.p_s)
    den = num + np.where(right, (1.0 - pa) * params.p_g, (1.0 - pa) * (1.0 - params.p_g))
    out = np.array(np.broadcast_to(pa, den.shape), dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0.0)
    return out


def transition_array(p: npt.ArrayLike, params: BKTParams | ParamArrays) -> FloatArray:
    pa = np.asarray(p, dtype=np.float64)
    return np.asarray(pa * (1.0 - params.p_f) + (1.0 - pa) * params.p_t, dtype=np.float64)


def update_array(
    p: npt.ArrayLike, correct: npt.ArrayLike, params: BKTParams | ParamArrays
) -> FloatArray:
    return transition_array(posterior_array(p, correct, params), params)


# --- The live state: log-odds, so that mastery never saturates ------------------------------------
#
# p(L) in float64 cannot be closer to 1 than 1.1e-16: after a few dozen correct answers in a
# row (with no forgetting) `update` returns exactly 1.0, and from then on no wrong answer can
# lower it. The exact model keeps believing the learner knows the skill, but by a margin that
# later wrong answers wear down (ASSISTments 2009: scoring with saturating p(L) loses 0.013 AUC
# against pyBKT, which keeps both p(L) and 1 - p(L)). So the live state is the log-odds
# x = log(p / (1 - p)), which holds that margin for any history; p(L) = from_logit(x).


def to_logit(p: float) -> float:
    """log(p / (1 - p)); -inf at 0, +inf at 1."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    return _log(p) - (math.log1p(-p) if p < 1.0 else -math.inf)


def from_logit(x: float) -> float:
    """p(L) from its log-odds."""
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def predict_correct_logit(x: float, params: BKTParams) -> float:
    """`predict_correct` for a learner whose mastery has log-odds x."""
    return from_logit(x) * (1.0 - params.p_s) + from_logit(-x) * params.p_g


def update_logit(x: float, correct: bool, params: BKTParams) -> float:
    """`update` on log-odds: the new log-odds of L after an answer (posterior, transition)."""
    known, unknown = _log_sigmoid(x), _log_sigmoid(-x)  # log p, log(1 - p)
    if correct:
        known_e, unknown_e = known + _log(1.0 - params.p_s), unknown + _log(params.p_g)
    else:
        known_e, unknown_e = known + _log(params.p_s), unknown + _log(1.0 - params.p_g)
    if known_e == unknown_e == -math.inf:  # an answer the model calls impossible
        known_e, unknown_e = known, unknown
    new_known = _logaddexp(known_e + _log(1.0 - params.p_f), unknown_e + _log(params.p_t))
    new_unknown = _logaddexp(known_e + _log(params.p_f), unknown_e + _log(1.0 - params.p_t))
    return new_known - new_unknown


def _log(v: float) -> float:
    return math.log(v) if v > 0.0 else -math.inf


def _log_sigmoid(x: float) -> float:
    """log(1 / (1 + exp(-x))) without overflow."""
    if x >= 0.0:
        return -math.log1p(math.exp(-x))
    return x - math.log1p(math.exp(x))


def _logaddexp(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    if b == -math.inf:
        return a
    return a + math.log1p(math.exp(b - a))


def one_step_predictions(
    sequences: Sequence[npt.ArrayLike], params: BKTParams | Sequence[BKTParams]
) -> list[FloatArray]:
    """For each sequence of 0/1 answers, p(correct) of every answer before it is seen.

    What the live system computes answer by answer (`predict_correct_logit`, then
    `update_logit`), vectorised across sequences (equal to the scalar loop within 1e-12):
    one parameter set for all sequences, or one per sequence.
    """
    seqs = [np.asarray(s, dtype=np.int8).ravel() for s in sequences]
    if isinstance(params, BKTParams):
        table = ParamArrays.of([params] * len(seqs))
    else:
        if len(params) != len(seqs):
            raise ValueError(f"{len(params)} parameter sets for {len(seqs)} sequences")
        table = ParamArrays.of(params)
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    flat = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int8)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    # Time-major over the sequences sorted by length: step t touches the first `active[t]`.
    order = np.argsort(-lengths, kind="stable")
    table, offsets = table.take(order), offsets[order]
    longest = int(lengths.max()) if len(seqs) else 0
    active = np.searchsorted(-lengths[order], -np.arange(longest), side="left")
    out = np.empty(len(flat), dtype=np.float64)
    with np.errstate(divide="ignore"):
        x = np.log(table.p_l0) - np.log1p(-table.p_l0)
        log_s, log_1s = np.log(table.p_s), np.log1p(-table.p_s)
        log_g, log_1g = np.log(table.p_g), np.log1p(-table.p_g)
        log_t, log_1t = np.log(table.p_t), np.log1p(-table.p_t)
        log_f, log_1f = np.log(table.p_f), np.log1p(-table.p_f)
    for t in range(longest):
        n = int(active[t])
        at = offsets[:n] + t
        xt = x[:n]
        known, unknown = -np.logaddexp(0.0, -xt), -np.logaddexp(0.0, xt)
        out[at] = np.exp(known) * (1.0 - table.p_s[:n]) + np.exp(unknown) * table.p_g[:n]
        right = flat[at] == 1
        known_e = known + np.where(right, log_1s[:n], log_s[:n])
        unknown_e = unknown + np.where(right, log_g[:n], log_1g[:n])
        impossible = (known_e == -np.inf) & (unknown_e == -np.inf)
        known_e = np.where(impossible, known, known_e)
        unknown_e = np.where(impossible, unknown, unknown_e)
        new_known = np.logaddexp(known_e + log_1f[:n], unknown_e + log_t[:n])
        new_unknown = np.logaddexp(known_e + log_f[:n], unknown_e + log_1t[:n])
        x[:n] = new_known - new_unknown
    return np.split(out, np.cumsum(lengths)[:-1]) if seqs else []


def log_likelihood(sequences: Iterable[npt.ArrayLike], params: BKTParams) -> float:
    """Natural log-likelihood of the sequences under the parameters (the forward algorithm)."""
    seqs = [np.asarray(s, dtype=np.int8).ravel() for s in sequences]
    total = 0.0
    for seq, preds in zip(seqs, one_step_predictions(seqs, params), strict=True):
        with np.errstate(divide="ignore"):
            total += float(np.sum(np.log(np.where(seq == 1, preds, 1.0 - preds))))
    return total


# --- Fitting ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FitBounds:
    """Where fitted parameters may lie (see the module docstring)."""

    eps: float = EPS
    max_guess: float = 0.5
    max_slip: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.eps < 0.01:
            raise ValueError("eps must be in (0, 0.01)")
        if not (2 * self.eps < self.max_guess <= 0.5 and 2 * self.eps < self.max_slip <= 0.5):
            raise ValueError("max_guess and max_slip must be in (2 eps, 0.5]")


@dataclass(frozen=True, slots=True)
class BKTFit:
    """The best of the restarts for one skill, its log-likelihood and its iterations."""

    params: BKTParams
    log_likelihood: float
    iterations: int
    converged: bool
    n_sequences: int
    n_responses: int
    #: Every restart's last log-likelihood (converged, at max_iter or pruned), in order.
    restart_log_likelihoods: tuple[float, ...] = field(default=())


def fit(
    sequences: Iterable[npt.ArrayLike],
    *,
    forgets: bool = False,
    restarts: int = DEFAULT_RESTARTS,
    seed: int = 0,
    tol: float = DEFAULT_TOL,
    min_iter: int = DEFAULT_MIN_ITER,
    max_iter: int = DEFAULT_MAX_ITER,
    bounds: FitBounds | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    prune: bool = True,
) -> BKTFit:
    """Fit one skill from its learners' 0/1 sequences (see `fit_skills`)."""
    return fit_skills(
        {0: list(sequences)},
        forgets=forgets,
        restarts=restarts,
        seed=seed,
        tol=tol,
        min_iter=min_iter,
        max_iter=max_iter,
        bounds=bounds,
        batch_size=batch_size,
        prune=prune,
    )[0]


def fit_skills(
    data: Mapping[K, Iterable[npt.ArrayLike]],
    *,
    forgets: bool = False,
    restarts: int = DEFAULT_RESTARTS,
    seed: int = 0,
    tol: float = DEFAULT_TOL,
    min_iter: int = DEFAULT_MIN_ITER,
    max_iter: int = DEFAULT_MAX_ITER,
    bounds: FitBounds | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    prune: bool = True,
) -> dict[K, BKTFit]:
    """Fit one BKT model per skill: `data` maps a skill to its learners' 0/1 sequences.

    - `forgets`: fit p_f too (otherwise it is 0);
    - `restarts`, `seed`: random starting points per skill, the best log-likelihood wins;
    - `tol`, `min_iter`, `max_iter`: a restart stops when its log-likelihood rises by less
      than `tol` after at least `min_iter` iterations, or after `max_iter`;
    - `bounds`: where the parameters may lie (the module docstring says why);
    - `batch_size`: elements (prefix-tree nodes x restarts) fitted together, for memory;
    - `prune`: abandon restarts that cannot catch up with the best one at their pace.

    A skill with no answers gets the default `BKTParams()` with `n_responses == 0`.
    Deterministic for the same data (in the same order) and seed; `batch_size` does not
    change the results.
    """
    if restarts < 1:
        raise ValueError("restarts must be at least 1")
    if max_iter < 1 or min_iter < 1:
        raise ValueError("max_iter and min_iter must be at least 1")
    if not tol > 0.0:
        raise ValueError("tol must be positive")
    bounds = bounds or FitBounds()
    keys = list(data)
    if not keys:
        return {}
    raw_skills = [[np.asarray(seq).ravel() for seq in data[key]] for key in keys]
    per_skill = _as_answers(keys, raw_skills)

    starts = np.stack(
        [_starting_points(seed, k, restarts, forgets, bounds) for k in range(len(keys))]
    ).reshape(len(keys), restarts, 5)
    fitted = _Batch(per_skill, bounds, forgets, batch_size).run(
        starts, tol, min_iter, max_iter, prune
    )

    result: dict[K, BKTFit] = {}
    for k, key in enumerate(keys):
        n_seq = len(per_skill[k])
        n_resp = int(sum(len(s) for s in per_skill[k]))
        if n_resp == 0:
            result[key] = BKTFit(BKTParams(), 0.0, 0, True, 0, 0, ())
            continue
        params, lls, iters, conv = fitted[k]
        best = int(np.argmax(lls))  # the first of equal maxima
        p_l0, p_t, p_g, p_s, p_f = (float(x) for x in params[best])
        result[key] = BKTFit(
            params=BKTParams(p_l0=p_l0, p_t=p_t, p_g=p_g, p_s=p_s, p_f=p_f if forgets else 0.0),
            log_likelihood=float(lls[best]),
            iterations=int(iters[best]),
            converged=bool(conv[best]),
            n_sequences=n_seq,
            n_responses=n_resp,
            restart_log_likelihoods=tuple(float(x) for x in lls),
        )
    return result


def _as_answers(
    keys: Sequence[object], raw_skills: list[list[npt.NDArray[np.generic]]]
) -> list[list[npt.NDArray[np.int8]]]:
    """The sequences as int8 arrays, empty ones dropped; anything but 0/1 is an error."""
    flat = [seq for skill in raw_skills for seq in skill if seq.size]
    if flat:
        values = np.concatenate(flat)
        if values.dtype.kind not in "biuf" or not np.isin(values, (0, 1)).all():
            for key, skill in zip(keys, raw_skills, strict=True):
                for seq in skill:
                    if seq.size and not (seq.dtype.kind in "biuf" and np.isin(seq, (0, 1)).all()):
                        raise ValueError(f"skill {key!r}: answers must be 0 or 1, got {seq!r}")
    return [[seq.astype(np.int8) for seq in skill if seq.size] for skill in raw_skills]


def _starting_points(
    seed: int, k: int, restarts: int, forgets: bool, bounds: FitBounds
) -> FloatArray:
    rng = np.random.default_rng([seed, k])
    draws = rng.random((restarts, 5))
    starts = np.empty((restarts, 5))
    starts[:, 0] = draws[:, 0]
    starts[:, 1] = draws[:, 1] * 0.4
    starts[:, 2] = draws[:, 2] * 0.4
    starts[:, 3] = draws[:, 3] * 0.3
    starts[:, 4] = draws[:, 4] if forgets else 0.0
    return _clip(starts, bounds, forgets)


def _clip(params: FloatArray, bounds: FitBounds, forgets: bool) -> FloatArray:
    lo, hi = bounds.eps, 1.0 - bounds.eps
    out = np.clip(params, lo, hi)
    out[..., 2] = np.minimum(out[..., 2], bounds.max_guess - bounds.eps)
    out[..., 3] = np.minimum(out[..., 3], bounds.max_slip - bounds.eps)
    if forgets:  # learn + forget <= 1, as `BKTParams` checks it
        out[..., 4] = np.minimum(out[..., 4], 1.0 - out[..., 1])
        out[..., 1] = np.minimum(out[..., 1], 1.0 - out[..., 4])
    else:
        out[..., 4] = 0.0
    return out


# --- The batch: every (skill, restart) pair over a prefix tree of each skill's sequences --------


@dataclass(slots=True)
class _Trie:
    """Unique prefixes of all skills' sequences, numbered level by level.

    Within a level, nodes are ordered by (skill, answer, parent), so the nodes of one
    (level, skill, answer) form a contiguous run: a "segment".
    """

    parent: IntArray  # parent node, -1 at level 0
    obs: npt.NDArray[np.int8]
    weight: FloatArray  # sequences through the node
    ends: FloatArray  # sequences ending at the node
    seg_first: IntArray  # first node of each segment
    seg_count: IntArray
    seg_level: IntArray
    seg_skill: IntArray
    seg_obs: IntArray
    depth: IntArray  # per skill: number of levels


def _build_trie(per_skill: list[list[npt.NDArray[np.int8]]]) -> _Trie:
    seqs = [s for skill in per_skill for s in skill]
    skill_of = np.repeat(
        np.arange(len(per_skill), dtype=np.int64), [len(skill) for skill in per_skill]
    )
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    flat = np.concatenate(seqs).astype(np.int64) if seqs else np.zeros(0, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    order = np.argsort(-lengths, kind="stable")
    lengths, offsets, skill_of = lengths[order], offsets[order], skill_of[order]
    longest = int(lengths[0]) if len(lengths) else 0
    # active[d]: how many sequences (a prefix, sorted by length) are longer than d
    active = np.searchsorted(-lengths, -np.arange(longest + 1), side="left")

    parents, obs_parts, weights, ends, skills_parts = [], [], [], [], []
    current = np.zeros(0, dtype=np.int64)  # node (local to the previous level) of each sequence
    previous_start = 0  # global id of the previous level's first node
    level_start = 0
    previous_count = 1
    for d in range(longest):
        n = int(active[d])
        answer = flat[offsets[:n] + d]
        group = skill_of[:n] * 2 + answer
        key = group * previous_count + (current[:n] if d else 0)
        uniq, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
        if d:
            parents.append(uniq % previous_count + previous_start)
        else:
            parents.append(np.full(len(uniq), -1, dtype=np.int64))
        group_of_node = uniq // previous_count
        obs_parts.append((group_of_node % 2).astype(np.int8))
        skills_parts.append(group_of_node // 2)
        weights.append(counts.astype(np.float64))
        ending = inverse[int(active[d + 1]) : n]
        ends.append(np.bincount(ending, minlength=len(uniq)).astype(np.float64))
        current = inverse.astype(np.int64)
        previous_start = level_start
        level_start += len(uniq)
        previous_count = len(uniq)

    level_sizes = np.array([len(w) for w in weights], dtype=np.int64)
    node_level = np.repeat(np.arange(longest, dtype=np.int64), level_sizes)
    node_skill = np.concatenate(skills_parts) if skills_parts else np.zeros(0, dtype=np.int64)
    node_obs = np.concatenate(obs_parts) if obs_parts else np.zeros(0, dtype=np.int8)
    n_nodes = len(node_level)
    seg_key = (node_level * (len(per_skill) + 1) + node_skill) * 2 + node_obs
    is_first = np.ones(n_nodes, dtype=bool)
    is_first[1:] = seg_key[1:] != seg_key[:-1]
    seg_first = np.flatnonzero(is_first).astype(np.int64)
    seg_count = np.diff(np.append(seg_first, n_nodes)).astype(np.int64)
    depth = np.zeros(len(per_skill), dtype=np.int64)
    np.maximum.at(depth, node_skill, node_level + 1)
    return _Trie(
        parent=np.concatenate(parents).astype(np.int64) if parents else np.zeros(0, np.int64),
        obs=node_obs,
        weight=np.concatenate(weights) if weights else np.zeros(0),
        ends=np.concatenate(ends) if ends else np.zeros(0),
        seg_first=seg_first,
        seg_count=seg_count,
        seg_level=node_level[seg_first],
        seg_skill=node_skill[seg_first],
        seg_obs=node_obs[seg_first].astype(np.int64),
        depth=depth,
    )


# Rows of the workspace `acc`. The first ones are summed per job block after the backward
# pass (their sums feed the M-step), the last of those is the log-likelihood.
_G1, _G0 = 0, 1  # summed p(L), p(not L) at the node given all answers
_XI01 = 2  # summed transitions not L -> L
_PLAIN_STAY0, _PLAIN_LL = 3, 4  # without forgets: out of not L (any); log-likelihood
_XI00, _XI10, _XI11, _FORGETS_LL = 3, 4, 5, 6  # with forgets
_FORGETS_STAY0, _FORGETS_FROM1 = 7, 8  # with forgets, not summed: out of not L, out of L


@dataclass(slots=True)
class _Level:
    """One level's slice of the layout and views of the workspace rows, made once per layout.

    Every array is one-dimensional and contiguous: numpy's overhead per call is what the
    deep levels (a few elements each) cost, and it is lowest there.
    """

    job: IntArray
    jo: IntArray  # 2 * job + answer
    parent: IntArray
    child0: IntArray  # child element with answer 0, or the zero slot
    child1: IntArray
    ends: FloatArray
    ll: FloatArray  # p(answer | earlier answers), then its log
    q1: FloatArray  # p(L | answers so far)
    q0: FloatArray  # p(not L | answers so far)
    pn1: FloatArray  # the same after the transition: the children's prior
    pn0: FloatArray
    g1: FloatArray
    g0: FloatArray
    from1: FloatArray
    stay0: FloatArray
    xi01: FloatArray
    xi10: FloatArray
    xi11: FloatArray
    xi00: FloatArray


@dataclass(slots=True)
class _Layout:
    """Elements (job, node) of the live jobs, level-major; a block is one job's segment."""

    n: int
    n_jobs: int
    levels: list[_Level]
    weight: FloatArray  # per element: sequences through its node
    block_start: IntArray
    block_job: IntArray
    block_obs: IntArray
    root_blocks: int  # blocks of level 0 come first


class _Batch:
    """All skills' tree; EM for groups of (skill, restart) jobs over it, in one workspace."""

    def __init__(
        self,
        per_skill: list[list[npt.NDArray[np.int8]]],
        bounds: FitBounds,
        forgets: bool,
        max_elements: int,
    ) -> None:
        self.n_skills = len(per_skill)
        self.bounds = bounds
        self.forgets = forgets
        self.max_elements = max_elements
        self.trie = trie = _build_trie(per_skill)
        # Groups: the segments of one (level, skill), one or two (answer 0, answer 1).
        gkey = trie.seg_level * (self.n_skills + 1) + trie.seg_skill
        starts = np.ones(len(gkey), dtype=bool)
        starts[1:] = gkey[1:] != gkey[:-1]
        self.group_first_seg = np.flatnonzero(starts).astype(np.int64)
        self.group_nseg = np.diff(np.append(self.group_first_seg, len(gkey))).astype(np.int64)
        self.group_level = trie.seg_level[self.group_first_seg]
        self.group_skill = trie.seg_skill[self.group_first_seg]
        self.group_first_node = trie.seg_first[self.group_first_seg]
        # The group of the same skill one level up (the parents' group): groups are sorted
        # by (level, skill), so look (level - 1, skill) up by binary search.
        stride = self.n_skills + 1
        gk = self.group_level * stride + self.group_skill
        wanted = (self.group_level - 1) * stride + self.group_skill
        found = np.minimum(np.searchsorted(gk, wanted), max(len(gk) - 1, 0))
        ok = (self.group_level > 0) & (gk[found] == wanted) if len(gk) else found > 0
        self.group_parent = np.where(ok, found, -1).astype(np.int64)
        self.n_sequences = np.array([len(skill) for skill in per_skill], dtype=np.float64)
        self.nodes_of_skill = np.bincount(
            trie.seg_skill, weights=trie.seg_count, minlength=self.n_skills
        ).astype(np.int64)
        self._rows = 9 if forgets else 5
        self._ll_row = _FORGETS_LL if forgets else _PLAIN_LL  # also the last row summed
        self._capacity = -1
        self._acc = np.zeros((0, 0))
        self._q = np.zeros((0, 0))
        self._pn = np.zeros((0, 0))

    def _workspace(self, n: int) -> None:
        if n + 1 > self._capacity:
            self._capacity = n + 1
            self._acc = np.zeros((self._rows, n + 1))
            self._q = np.zeros((2, n + 1))
            self._pn = np.zeros((2, n + 1))

    def layout(self, job_skill: IntArray) -> _Layout:
        """Elements for the live jobs (`job_skill` sorted: each skill's jobs together)."""
        trie = self.trie
        n_jobs_of = np.bincount(job_skill, minlength=self.n_skills)
        first_job_of = np.concatenate([[0], np.cumsum(n_jobs_of)[:-1]]).astype(np.int64)
        # One entry per (group, live job of its skill): a "job-block" of 1 or 2 segments.
        reps = n_jobs_of[self.group_skill]
        gi_group = np.repeat(np.arange(len(reps), dtype=np.int64), reps)
        gi_first = np.concatenate([[0], np.cumsum(reps)[:-1]]).astype(np.int64)
        gi_rank = np.arange(len(gi_group), dtype=np.int64) - gi_first[gi_group]
        gi_job = first_job_of[self.group_skill[gi_group]] + gi_rank
        nseg = self.group_nseg[gi_group]
        block_gi = np.repeat(np.arange(len(gi_group), dtype=np.int64), nseg)
        block_first_of_gi = np.concatenate([[0], np.cumsum(nseg)[:-1]]).astype(np.int64)
        block_seg = (
            self.group_first_seg[gi_group[block_gi]]
            + np.arange(len(block_gi), dtype=np.int64)
            - block_first_of_gi[block_gi]
        )
        block_count = trie.seg_count[block_seg]
        block_start = np.concatenate([[0], np.cumsum(block_count)[:-1]]).astype(np.int64)
        n = int(block_count.sum())
        node = np.repeat(trie.seg_first[block_seg] - block_start, block_count)
        node += np.arange(n, dtype=np.int64)
        block_job = gi_job[block_gi]
        job = np.repeat(block_job, block_count)
        obs = trie.obs[node]
        # Parent element: the same job's block one level up, offset by the parent node.
        gi_start = block_start[block_first_of_gi]
        pg = self.group_parent[gi_group]
        has_parent = pg >= 0
        safe_pg = np.maximum(pg, 0)
        parent_gi = np.where(has_parent, gi_first[safe_pg] + gi_rank, 0)
        parent_base = np.where(has_parent, gi_start[parent_gi] - self.group_first_node[safe_pg], 0)
        gi_count = np.add.reduceat(block_count, block_first_of_gi) if n else block_count
        parent_node = trie.parent[node]
        parent = np.repeat(parent_base, gi_count) + parent_node
        parent[parent_node < 0] = n
        child0 = np.full(n, n, dtype=np.int64)
        child1 = np.full(n, n, dtype=np.int64)
        inner = np.flatnonzero(parent_node >= 0)
        inner_obs = obs[inner].astype(bool)
        child0[parent[inner[~inner_obs]]] = inner[~inner_obs]
        child1[parent[inner[inner_obs]]] = inner[inner_obs]
        jo = job * 2 + obs
        ends = trie.ends[node]
        block_level = trie.seg_level[block_seg]

        self._workspace(n)
        acc, q, pn = self._acc, self._q, self._pn
        acc[:, n] = 0.0  # the zero slot that missing children point at
        ll = acc[self._ll_row]
        if self.forgets:
            stay0, from1 = acc[_FORGETS_STAY0], acc[_FORGETS_FROM1]
            xi10, xi11, xi00 = acc[_XI10], acc[_XI11], acc[_XI00]
        else:  # only forgetting needs these
            stay0, from1 = acc[_PLAIN_STAY0], acc[0, :0]
            xi10 = xi11 = xi00 = from1
        levels: list[_Level] = []
        if n:
            first_block = np.searchsorted(block_level, np.arange(int(block_level.max()) + 2))
            edges = np.append(block_start, n)
            for d in range(len(first_block) - 1):
                sl = slice(int(edges[first_block[d]]), int(edges[first_block[d + 1]]))
                levels.append(
                    _Level(
                        job[sl], jo[sl], parent[sl], child0[sl], child1[sl], ends[sl], ll[sl],
                        q[0, sl], q[1, sl], pn[0, sl], pn[1, sl], acc[_G1, sl], acc[_G0, sl],
                        from1[sl], stay0[sl], acc[_XI01, sl], xi10[sl], xi11[sl], xi00[sl],
                    )
                )  # fmt: skip
        return _Layout(
            n=n,
            n_jobs=len(job_skill),
            levels=levels,
            weight=trie.weight[node],
            block_start=block_start,
            block_job=block_job,
            block_obs=trie.seg_obs[block_seg],
            root_blocks=int(np.searchsorted(block_level, 1)),
        )

    def run(
        self, starts: FloatArray, tol: float, min_iter: int, max_iter: int, prune: bool
    ) -> list[tuple[FloatArray, FloatArray, IntArray, BoolArray]]:
        """EM for every (skill, restart) from `starts` (skills x restarts x 5).

        Skills run in groups of at most `max_elements` elements (nodes x restarts), deepest
        first, so that the loop over levels stays short for most groups and memory bounded.
        With `prune`, a restart stops once it trails its skill's best restart by more than it
        would gain by `max_iter` at its current pace.
        """
        n_skills, restarts, _ = starts.shape
        params = starts.reshape(-1, 5).copy()  # job = skill * restarts + restart
        n_jobs = len(params)
        job_skill = np.repeat(np.arange(n_skills, dtype=np.int64), restarts)
        final_ll = np.full(n_jobs, -np.inf)
        iterations = np.zeros(n_jobs, dtype=np.int64)
        converged = np.zeros(n_jobs, dtype=bool)
        previous_ll = np.full(n_jobs, -np.inf)
        best_ll = np.full(n_skills, -np.inf)
        size = self.nodes_of_skill * restarts
        order = np.argsort(-self.trie.depth, kind="stable")
        order = order[size[order] > 0]
        group: list[int] = []
        groups: list[list[int]] = []
        filled = 0
        for k in order.tolist():
            if group and filled + size[k] > self.max_elements:
                groups.append(group)
                group, filled = [], 0
            group.append(k)
            filled += int(size[k])
        if group:
            groups.append(group)
        for skills in groups:
            live = np.flatnonzero(np.isin(job_skill, skills))
            layout = self.layout(job_skill[live])
            layout_jobs = live.copy()  # the global job of each of the layout's jobs
            for it in range(1, max_iter + 1):
                local = np.searchsorted(layout_jobs, live)
                ll, new = self._em_step(layout, params[layout_jobs], job_skill[layout_jobs])
                ll, new = ll[local], new[local]
                gain = ll - previous_ll[live]
                settled = (it >= min_iter) & (np.abs(gain) < tol)
                done = settled | (it == max_iter)
                if prune:
                    skill = job_skill[live]
                    np.maximum.at(best_ll, skill, ll)
                    done |= (it >= min_iter) & (best_ll[skill] - ll > (max_iter - it) * gain)
                finished = live[done]
                final_ll[finished] = ll[done]
                iterations[finished] = it
                converged[finished] = settled[done]
                previous_ll[live] = ll
                params[live[~done]] = new[~done]
                live = live[~done]
                if len(live) == 0:
                    break
                if self.nodes_of_skill[job_skill[live]].sum() < 0.67 * layout.n:
                    layout = self.layout(job_skill[live])
                    layout_jobs = live.copy()
        out = []
        for k in range(n_skills):
            sl = slice(k * restarts, (k + 1) * restarts)
            out.append((params[sl], final_ll[sl], iterations[sl], converged[sl]))
        return out

    def _em_step(
        self, layout: _Layout, params: FloatArray, job_skill: IntArray
    ) -> tuple[FloatArray, FloatArray]:
        """One E-step (forward-backward over the tree) and M-step for every layout job.

        Forward, per element: q = (p(L), p(not L)) given the answers so far, both kept so that
        neither loses precision, and pn = the same after the transition (the children's
        prior). Backward (the forward-filter backward-smoother form): g = p(L), p(not L)
        given all answers, summed over the sequences through the node, and the summed
        transitions; a node's sums are linear in its children's.
        """
        n, n_jobs = layout.n, layout.n_jobs
        forgets = self.forgets
        l0_, t_, g_, s_, f_ = (np.ascontiguousarray(params[:, i]) for i in range(5))
        lik1 = np.stack([s_, 1.0 - s_], axis=1).ravel()  # p(answer | L), by 2 job + answer
        lik0 = np.stack([1.0 - g_, g_], axis=1).ravel()  # p(answer | not L)
        pn1_all, pn0_all = self._pn[0], self._pn[1]
        multiply, divide, add, subtract = np.multiply, np.divide, np.add, np.subtract

        levels = layout.levels
        for d, lv in enumerate(levels):
            if d:
                a1 = pn1_all.take(lv.parent)
                a0 = pn0_all.take(lv.parent)
            else:
                a1 = l0_.take(lv.job)
                a0 = 1.0 - a1
            a1 *= lik1.take(lv.jo)
            a0 *= lik0.take(lv.jo)
            c = add(a1, a0, out=lv.ll)
            q1 = divide(a1, c, out=lv.q1)
            q0 = divide(a0, c, out=lv.q0)
            xi01 = multiply(q0, t_.take(lv.job), out=lv.xi01)
            if forgets:
                xi10 = multiply(q1, f_.take(lv.job), out=lv.xi10)
                add(subtract(q1, xi10, out=lv.xi11), xi01, out=lv.pn1)
                add(subtract(q0, xi01, out=lv.xi00), xi10, out=lv.pn0)
            else:
                add(q1, xi01, out=lv.pn1)
                subtract(q0, xi01, out=lv.pn0)

        g1_all, g0_all = self._acc[_G1], self._acc[_G0]
        for lv in reversed(levels):
            s1 = g1_all.take(lv.child0)
            s1 += g1_all.take(lv.child1)
            s0 = g0_all.take(lv.child0)
            s0 += g0_all.take(lv.child1)
            v1 = divide(s1, lv.pn1, out=s1)  # children's summed p(L) over their prior
            xi01 = multiply(lv.xi01, v1, out=lv.xi01)
            if forgets:
                v0 = divide(s0, lv.pn0, out=s0)
                xi11 = multiply(lv.xi11, v1, out=lv.xi11)
                xi10 = multiply(lv.xi10, v0, out=lv.xi10)
                xi00 = multiply(lv.xi00, v0, out=lv.xi00)
                g1 = multiply(lv.q1, lv.ends, out=lv.g1)
                g1 += add(xi10, xi11, out=lv.from1)
                g0 = multiply(lv.q0, lv.ends, out=lv.g0)
                g0 += add(xi01, xi00, out=lv.stay0)
            else:
                stay0 = add(xi01, s0, out=lv.stay0)  # not L -> not L is all of s0 here
                v1 += lv.ends
                multiply(lv.q1, v1, out=lv.g1)
                g0 = multiply(lv.q0, lv.ends, out=lv.g0)
                g0 += stay0

        ll_row = self._acc[self._ll_row, :n]
        np.log(ll_row, out=ll_row)
        ll_row *= layout.weight
        sums = np.add.reduceat(self._acc[: self._ll_row + 1, :n], layout.block_start, axis=1)
        bj = layout.block_job
        jo_block = bj * 2 + layout.block_obs

        def per_job(row: int) -> FloatArray:
            return _sum_by(bj, sums[row], n_jobs)

        def per_job_obs(row: int) -> FloatArray:
            return _sum_by(jo_block, sums[row], 2 * n_jobs).reshape(-1, 2)

        g1_jo, g0_jo = per_job_obs(_G1), per_job_obs(_G0)
        roots = layout.root_blocks
        g1_root = _sum_by(bj[:roots], sums[_G1, :roots], n_jobs)
        new = params.copy()
        _ratio_into(new[:, 0], g1_root, self.n_sequences[job_skill])
        _ratio_into(new[:, 2], g0_jo[:, 1], g0_jo.sum(axis=1))
        _ratio_into(new[:, 3], g1_jo[:, 0], g1_jo.sum(axis=1))
        xi01 = per_job(_XI01)
        if forgets:
            xi00, xi10, xi11 = per_job(_XI00), per_job(_XI10), per_job(_XI11)
            _ratio_into(new[:, 1], xi01, xi01 + xi00)
            _ratio_into(new[:, 4], xi10, xi10 + xi11)
            # learn + forget <= 1: where the free optimum breaks it, the constrained one lies
            # on learn + forget = 1, where (with forget = 1 - learn) the expected complete
            # log-likelihood is (xi01 + xi11) log learn + (xi00 + xi10) log(1 - learn).
            over = new[:, 1] + new[:, 4] > 1.0
            if over.any():
                up = xi01 + xi11
                total = up + xi00 + xi10
                _ratio_into(new[:, 1], np.where(over, up, new[:, 1]), np.where(over, total, 1.0))
                new[over, 4] = 1.0 - new[over, 1]
        else:
            _ratio_into(new[:, 1], xi01, per_job(_PLAIN_STAY0))
        return per_job(self._ll_row), _clip(new, self.bounds, forgets)


def _sum_by(index: IntArray, values: FloatArray, size: int) -> FloatArray:
    return np.bincount(index, weights=values, minlength=size).astype(np.float64, copy=False)


def _ratio_into(target: FloatArray, num: FloatArray, den: FloatArray) -> None:
    """target = num / den where den > 0 (no evidence keeps the previous value)."""
    np.divide(num, den, out=target, where=den > 0.0)
