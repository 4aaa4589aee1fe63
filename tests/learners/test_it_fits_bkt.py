"""Fitting BKT by EM: recovery of known parameters, the tree E-step, degenerate data."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from learners import bkt

TRUTH = bkt.BKTParams(p_l0=0.3, p_t=0.15, p_g=0.2, p_s=0.1)
FORGETFUL_TRUTH = bkt.BKTParams(p_l0=0.3, p_t=0.15, p_g=0.2, p_s=0.1, p_f=0.05)


def simulate(params: bkt.BKTParams, learners: int, answers: int, seed: int) -> list[np.ndarray]:
    """Answers drawn from the BKT model itself: a hidden state per learner, answer by answer."""
    rng = np.random.default_rng(seed)
    known = rng.random(learners) < params.p_l0
    out = np.empty((learners, answers), dtype=np.int8)
    for t in range(answers):
        u = rng.random(learners)
        out[:, t] = np.where(known, u >= params.p_s, u < params.p_g)
        v = rng.random(learners)
        known = np.where(known, v >= params.p_f, v < params.p_t)
    return list(out)


def reference_em_step(
    sequences: list[np.ndarray], params: bkt.BKTParams, forgets: bool
) -> tuple[float, np.ndarray]:
    """One textbook Baum-Welch step, sequence by sequence (state 0: not L, 1: L)."""
    transition = np.array([[1 - params.p_t, params.p_t], [params.p_f, 1 - params.p_f]])
    emission = np.array([[1 - params.p_g, params.p_g], [params.p_s, 1 - params.p_s]])
    loglik = 0.0
    initial = np.zeros(2)
    moves = np.zeros((2, 2))
    emitted = np.zeros((2, 2))
    for seq in sequences:
        n = len(seq)
        alpha = np.zeros((n, 2))
        scale = np.zeros(n)
        a = np.array([1 - params.p_l0, params.p_l0]) * emission[:, seq[0]]
        scale[0], alpha[0] = a.sum(), a / a.sum()
        for t in range(1, n):
            a = (alpha[t - 1] @ transition) * emission[:, seq[t]]
            scale[t], alpha[t] = a.sum(), a / a.sum()
        beta = np.ones((n, 2))
        for t in range(n - 2, -1, -1):
            beta[t] = transition @ (emission[:, seq[t + 1]] * beta[t + 1]) / scale[t + 1]
        gamma = alpha * beta
        loglik += float(np.log(scale).sum())
        initial += gamma[0]
        for t in range(n - 1):
            moves += (
                alpha[t][:, None]
                * transition
                * (emission[:, seq[t + 1]] * beta[t + 1])[None, :]
                / scale[t + 1]
            )
        for t in range(n):
            emitted[:, seq[t]] += gamma[t]
    new = [
        initial[1] / initial.sum(),
        moves[0, 1] / moves[0].sum(),
        emitted[0, 1] / emitted[0].sum(),
        emitted[1, 0] / emitted[1].sum(),
        moves[1, 0] / moves[1].sum() if forgets else 0.0,
    ]
    return loglik, np.array(new)


def as_array(params: bkt.BKTParams) -> np.ndarray:
    return np.array([params.p_l0, params.p_t, params.p_g, params.p_s, params.p_f])


@pytest.mark.parametrize(("truth", "forgets"), [(TRUTH, False), (FORGETFUL_TRUTH, True)])
def test_it_recovers_known_parameters(truth: bkt.BKTParams, forgets: bool) -> None:
    sequences = simulate(truth, learners=2000, answers=20, seed=0)
    fitted = bkt.fit(sequences, forgets=forgets, tol=1e-4, seed=0)
    np.testing.assert_allclose(as_array(fitted.params), as_array(truth), rtol=0, atol=0.02)
    assert fitted.converged
    assert fitted.n_sequences == 2000 and fitted.n_responses == 40000
    # the maximum likelihood beats the truth, and is the likelihood the forward pass gives
    assert fitted.log_likelihood >= bkt.log_likelihood(sequences, truth)
    assert fitted.log_likelihood == pytest.approx(
        bkt.log_likelihood(sequences, fitted.params), abs=1e-6
    )


@pytest.mark.parametrize("forgets", [False, True])
def test_it_stops_at_a_fixed_point_of_textbook_em(forgets: bool) -> None:
    # Learners of different lengths, several with the same answers (they share tree nodes).
    rng = np.random.default_rng(5)
    truth = FORGETFUL_TRUTH if forgets else TRUTH
    sequences = [
        seq[: rng.integers(1, 13)] for seq in simulate(truth, learners=300, answers=12, seed=1)
    ]
    sequences += [np.array([1, 1, 1, 1]), np.array([1, 1, 1, 1]), np.array([0])]
    fitted = bkt.fit(sequences, forgets=forgets, tol=1e-10, max_iter=5000, restarts=3)
    loglik, stepped = reference_em_step(sequences, fitted.params, forgets)
    assert loglik == pytest.approx(fitted.log_likelihood, abs=1e-8)
    np.testing.assert_allclose(stepped, as_array(fitted.params), rtol=0, atol=2e-4)


def test_it_picks_the_best_restart_and_is_deterministic() -> None:
    sequences = simulate(TRUTH, learners=300, answers=10, seed=2)
    first = bkt.fit(sequences, restarts=5, seed=11)
    again = bkt.fit(sequences, restarts=5, seed=11)
    assert first == again
    assert first.log_likelihood == max(first.restart_log_likelihoods)
    assert len(first.restart_log_likelihoods) == 5


def test_it_gives_the_same_fits_in_any_batch_size() -> None:
    data = {
        "a": simulate(TRUTH, learners=200, answers=15, seed=3),
        "b": simulate(FORGETFUL_TRUTH, learners=50, answers=40, seed=4),
        "c": [np.array([1, 0, 1])],
    }
    for forgets in (False, True):
        together = bkt.fit_skills(data, forgets=forgets, restarts=4)
        apart = bkt.fit_skills(data, forgets=forgets, restarts=4, batch_size=10)
        assert together == apart


def test_it_prunes_only_restarts_that_cannot_win() -> None:
    data = {
        "a": simulate(TRUTH, learners=400, answers=20, seed=6),
        "b": simulate(FORGETFUL_TRUTH, learners=400, answers=20, seed=7),
    }
    pruned = bkt.fit_skills(data, forgets=True, restarts=8)
    full = bkt.fit_skills(data, forgets=True, restarts=8, prune=False)
    for skill in data:
        assert pruned[skill].log_likelihood == pytest.approx(full[skill].log_likelihood, abs=1.0)


@pytest.mark.parametrize(
    "sequences",
    [
        [np.ones(30, dtype=int)],  # one learner, all correct
        [np.zeros(30, dtype=int)],  # one learner, all wrong
        [np.ones(5, dtype=int)] * 40,  # many learners, all correct
        [np.array([1])],  # a single answer
        [np.array([0]), np.array([1]), np.array([1])],  # no transitions at all
        [[1, 0, 1, 0, 1, 0, 1, 0, 1, 0]] * 3,  # alternating
    ],
)
@pytest.mark.parametrize("forgets", [False, True])
def test_it_gives_valid_parameters_on_degenerate_data(
    sequences: list[np.ndarray], forgets: bool
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by zero, no NaN on the way
        fitted = bkt.fit(sequences, forgets=forgets, restarts=5)
    values = as_array(fitted.params)
    assert np.isfinite(values).all()
    assert math.isfinite(fitted.log_likelihood) and fitted.log_likelihood <= 0.0
    assert (values[:4] > 0.0).all() and (values[:4] < 1.0).all()
    assert fitted.params.p_g <= 0.5 and fitted.params.p_s <= 0.5
    assert fitted.params.p_t + fitted.params.p_f <= 1.0
    if not forgets:
        assert fitted.params.p_f == 0.0


def test_it_reads_all_correct_as_mastered_and_all_wrong_as_not() -> None:
    right = bkt.fit([np.ones(30, dtype=int)] * 20, restarts=5)
    wrong = bkt.fit([np.zeros(30, dtype=int)] * 20, restarts=5)
    assert bkt.predict_correct(right.params.p_l0, right.params) > 0.99
    assert bkt.predict_correct(wrong.params.p_l0, wrong.params) < 0.01


def test_it_returns_the_defaults_for_a_skill_without_answers() -> None:
    fits = bkt.fit_skills({"empty": [], "blank": [np.array([], dtype=int)], "one": [[1, 1]]})
    for skill in ("empty", "blank"):
        assert fits[skill].params == bkt.BKTParams()
        assert fits[skill].n_responses == 0
        assert fits[skill].log_likelihood == 0.0
    assert fits["one"].n_responses == 2
    assert bkt.fit_skills({}) == {}


def test_it_refuses_answers_other_than_zero_and_one() -> None:
    with pytest.raises(ValueError, match="skill 'x': answers must be 0 or 1"):
        bkt.fit_skills({"ok": [[0, 1]], "x": [[0, 2]]})
    with pytest.raises(ValueError, match="restarts"):
        bkt.fit([[1]], restarts=0)
